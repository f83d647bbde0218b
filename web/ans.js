// An ANS stack coder, bit-compatible with constriction 0.5's AnsCoder (DefaultAnsCoder: 32-bit
// words, 64-bit state, 24-bit precision), the coder of lossless and near-lossless payloads
// (docs/FORMAT.md §7, §8).
//
// The state s (0 or in [2**32, 2**64) while words are on the stack) is kept as two exact
// Numbers, s = hi * 2**24 + lo with lo < 2**24 and hi < 2**40, so every step is exact double
// arithmetic without BigInt:
//   push (symbol of cumulative c and mass m, m >= 1, c + m <= 2**24):
//     if floor(s / 2**40) >= m: push the low 32 bits of s onto the words, s = floor(s / 2**32)
//     s = floor(s / m) * 2**24 + c + (s mod m)
//   pop:
//     q = s mod 2**24 (the quantile); the symbol is the one with c <= q < c + m
//     s = floor(s / 2**24) * m + q - c
//     if s < 2**32 and words remain: s = s * 2**32 + (the top word, popped)
// Words are 32-bit, written little-endian by the container. get_compressed appends the state to
// the words, low word first, leaving out its zero high words (so a stream never ends in a zero
// word, and the empty coder has no words).

export const PRECISION = 24;
export const TOTAL = 1 << PRECISION; // every table's masses sum to this

const P24 = 0x1000000;
const P16 = 0x10000;
const P8 = 0x100;
const P32 = 0x100000000;

export class AnsError extends Error {}

export class AnsCoder {
  /** An empty coder, or one over `words` (Uint32Array or array, top of the stack last) as
   * constriction's `AnsCoder(words)`: the last word must not be 0. */
  constructor(words) {
    this.hi = 0;
    this.lo = 0;
    const n = words ? words.length : 0;
    this.words = new Uint32Array(Math.max(16, n + 16));
    this.size = 0;
    if (n === 0) return;
    this.words.set(words);
    this.size = n;
    const first = this._take();
    if (first === 0) throw new AnsError("Invalid compressed data: ANS compressed data never ends in a zero word."); // constriction's text
    // read_initial_state: the top word, then one more if there is one (then s >= 2**32).
    let s = first;
    if (this.size > 0) {
      const w = this._take();
      this.hi = s * P8 + Math.floor(w / P24);
      this.lo = w % P24;
    } else {
      this.hi = Math.floor(s / P24);
      this.lo = s % P24;
    }
  }

  _take() {
    this.size -= 1;
    return this.words[this.size];
  }

  _put(word) {
    if (this.size === this.words.length) {
      const grown = new Uint32Array(this.words.length * 2);
      grown.set(this.words);
      this.words = grown;
    }
    this.words[this.size++] = word;
  }

  /** True when nothing is left to decode (the state is 0), as constriction's is_empty. */
  isEmpty() {
    return this.hi === 0 && this.lo === 0;
  }

  /** constriction's num_valid_bits: 32 per word on the stack plus the state's bit length - 1. */
  numValidBits() {
    const hi = this.hi;
    let bits;
    if (hi >= P8 * P24) bits = 56 + 32 - Math.clz32(Math.floor(hi / P32)); // hi >= 2**32
    else if (hi > 0) bits = 24 + 32 - Math.clz32(hi);
    else bits = 32 - Math.clz32(this.lo);
    return 32 * this.size + Math.max(bits, 1) - 1;
  }

  /** Push a symbol of cumulative `start` and mass `mass` (integers, mass >= 1, start + mass <= 2**24). */
  push(start, mass) {
    let hi = this.hi;
    let lo = this.lo;
    if (Math.floor(hi / P16) >= mass) {
      // Flush the low word: s = floor(s / 2**32).
      this._put((lo + (hi % P8) * P24) >>> 0);
      lo = Math.floor(hi / P8) % P24;
      hi = Math.floor(hi / P32);
    }
    // floor(s / m) and s mod m, s = hi * 2**24 + lo, by long division in two exact steps.
    const qh = Math.floor(hi / mass);
    const rh = hi - qh * mass;
    const t = rh * P24 + lo; // < 2**48
    const ql = Math.floor(t / mass);
    const r = t - ql * mass;
    this.hi = qh * P24 + ql;
    this.lo = start + r;
  }

  /** The quantile of the next symbol to pop (s mod 2**24): the caller finds the symbol whose
   * interval [start, start + mass) holds it, then calls pop(start, mass). */
  quantile() {
    return this.lo;
  }

  /** Finish popping the symbol of cumulative `start` and mass `mass` that holds quantile(). */
  pop(start, mass) {
    const hi = this.hi;
    const hh = Math.floor(hi / P24); // < 2**16
    const hl = hi - hh * P24;
    const t = hl * mass + (this.lo - start); // < 2**48
    const tq = Math.floor(t / P24);
    let nhi = hh * mass + tq;
    let nlo = t - tq * P24;
    if (nhi < P8 && this.size > 0) {
      // s < 2**32: refill with the top word.
      const w = this._take();
      nhi = (nhi * P24 + nlo) * P8 + Math.floor(w / P24);
      nlo = w % P24;
    }
    this.hi = nhi;
    this.lo = nlo;
  }

  /** Push `symbol` under a cumulative table: cum[offset + s] .. cum[offset + s + 1]. */
  pushCumulative(symbol, cum, offset = 0) {
    const a = cum[offset + symbol];
    this.push(a, cum[offset + symbol + 1] - a);
  }

  /** Pop a symbol under the cumulative table cum[offset .. offset + n] (cum[offset] = 0,
   * cum[offset + n] = 2**24, strictly increasing); returns it. */
  popCumulative(cum, offset, n) {
    const q = this.lo;
    let a = 0;
    let b = n; // the symbol is in [a, b): cum[offset + a] <= q < cum[offset + b]
    while (b - a > 1) {
      const mid = (a + b) >> 1;
      if (cum[offset + mid] <= q) a = mid;
      else b = mid;
    }
    const start = cum[offset + a];
    this.pop(start, cum[offset + a + 1] - start);
    return a;
  }

  /** Push `symbol` (0 <= symbol < n) under constriction's Uniform(n) at 24-bit precision. */
  pushUniform(symbol, n) {
    const per = Math.floor(TOTAL / n);
    const start = symbol * per;
    this.push(start, symbol < n - 1 ? per : TOTAL - start);
  }

  /** Pop a symbol under constriction's Uniform(n). */
  popUniform(n) {
    const per = Math.floor(TOTAL / n);
    const guess = Math.floor(this.lo / per);
    if (guess < n - 1) {
      this.pop(guess * per, per);
      return guess;
    }
    const start = (n - 1) * per;
    this.pop(start, TOTAL - start);
    return n - 1;
  }

  /** The words of the stack followed by the state's, low word first, zero high words left out
   * (constriction's get_compressed): a fresh Uint32Array. */
  getCompressed() {
    const low = (this.lo + (this.hi % P8) * P24) >>> 0;
    const high = Math.floor(this.hi / P8);
    const extra = high !== 0 ? 2 : low !== 0 ? 1 : 0;
    const out = new Uint32Array(this.size + extra);
    out.set(this.words.subarray(0, this.size));
    if (extra >= 1) out[this.size] = low;
    if (extra === 2) out[this.size + 1] = high;
    return out;
  }
}

/** A cumulative table (Float64Array of n + 1 entries from 0 to 2**24) of integer masses. */
export function cumulativeOf(masses) {
  const cum = new Float64Array(masses.length + 1);
  for (let i = 0; i < masses.length; i++) cum[i + 1] = cum[i] + masses[i];
  return cum;
}
