// The range coder of docs/FORMAT.md §3.1-§3.4 (the arithmetic of constriction 0.5's default
// RangeEncoder/RangeDecoder: 32-bit words, 64-bit state, 24-bit probabilities), written from
// that specification, plus the shortest-payload termination of §3.3. State values are BigInt.

export const PRECISION = 24;
const MASK64 = (1n << 64n) - 1n;
const MAX_RANGE = MASK64;
const WORD = 32n;
const WORD_MASK = 0xffffffffn;
const RENORM = 1n << 32n;

const add64 = (a, b) => (a + b) & MASK64;

/** Encodes symbols given as (left cumulative c, probability p) out of 2**24. */
export class RangeEncoder {
  constructor() {
    this.lower = 0n;
    this.range = MAX_RANGE;
    this.words = []; // 32-bit words as Numbers
    this.inverted = null; // null (NORMAL) or {n, w}: n held-back words, the first being w
  }

  /** Code one symbol: left cumulative `c` and probability `p` (integers, p >= 1, c + p <= 2**24). */
  encode(c, p) {
    const scale = this.range >> BigInt(PRECISION);
    this.range = scale * BigInt(p);
    const newLower = add64(this.lower, scale * BigInt(c));
    if (this.inverted && add64(newLower, this.range) > newLower) {
      // The interval no longer wraps: the held-back words are settled, with or without a carry.
      const carry = newLower < this.lower;
      this.words.push(carry ? (this.inverted.w + 1) >>> 0 : this.inverted.w);
      for (let i = 1; i < this.inverted.n; i++) this.words.push(carry ? 0 : 0xffffffff);
      this.inverted = null;
    }
    this.lower = newLower;
    if (this.range < RENORM) {
      this.range <<= WORD;
      const word = Number(this.lower >> WORD);
      this.lower = (this.lower << WORD) & MASK64;
      if (this.inverted) this.inverted.n += 1;
      else if (add64(this.lower, this.range) > this.lower) this.words.push(word);
      else this.inverted = { n: 1, w: word };
    }
  }

  /** Number of words written or held back (constriction's pos()[0]). */
  get position() {
    return this.words.length + (this.inverted ? this.inverted.n : 0);
  }

  /** The sealed words (constriction's get_compressed()): the words so far plus the seal. */
  sealed() {
    if (this.range === MAX_RANGE) return [];
    const out = this.words.slice();
    const point = add64(this.lower, WORD_MASK);
    if (this.inverted) {
      const noCarry = point >= this.lower;
      out.push(noCarry ? this.inverted.w : (this.inverted.w + 1) >>> 0);
      for (let i = 1; i < this.inverted.n; i++) out.push(noCarry ? 0xffffffff : 0);
    }
    const pointWord = point >> WORD;
    out.push(Number(pointWord));
    if (add64(this.lower, this.range) >> WORD === pointWord) out.push(0);
    return out;
  }

  /**
   * The payload of §3.3: the shortest byte string whose value, zero-padded, lies in the final
   * interval, and of those the smallest.
   */
  shortestPayload() {
    const full = this.sealed();
    const bits = 32n * BigInt(this.position + 2);
    let point = 0n;
    for (const w of full) point = (point << WORD) | BigInt(w);
    point <<= bits - WORD * BigInt(full.length);
    const start = point - ((point - this.lower) & MASK64);
    const limit = 1n << bits;
    const end = start + this.range < limit ? start + this.range : limit;
    const byteCount = Number(bits / 8n);
    for (let n = 0; n <= byteCount; n++) {
      const unit = 1n << (bits - 8n * BigInt(n));
      const k = (start + unit - 1n) / unit; // ceil: start >= 0
      if (k * unit < end) {
        const out = new Uint8Array(n);
        let v = k;
        for (let i = n - 1; i >= 0; i--) {
          out[i] = Number(v & 0xffn);
          v >>= 8n;
        }
        return out;
      }
    }
    throw new Error("range coder: no payload lies in the final interval (cannot happen)");
  }
}

/** Thrown when the point lies past the end of a table (constriction's "invalid data"). */
export class InvalidData extends Error {}

/** Decodes a payload (bytes, zero-padded to whole big-endian 32-bit words). */
export class RangeDecoder {
  constructor(payload) {
    const count = Math.ceil(payload.length / 4);
    this.words = new Array(count);
    for (let i = 0; i < count; i++) {
      let w = 0;
      for (let j = 0; j < 4; j++) w = w * 256 + (payload[4 * i + j] ?? 0);
      this.words[i] = w;
    }
    this.next = 0;
    this.lower = 0n;
    this.range = MAX_RANGE;
    this.point = 0n;
    const first = Math.min(2, count);
    for (let i = 0; i < first; i++) this.point = (this.point << WORD) | BigInt(this.words[this.next++]);
    if (first === 1) this.point <<= WORD;
  }

  /**
   * Decode one symbol. `lookup(t)` maps a quantile t in [0, 2**24) to [symbol, c, p] with
   * c <= t < c + p. Throws InvalidData if the point lies past the table's end.
   */
  decode(lookup) {
    const scale = this.range >> BigInt(PRECISION);
    const t = ((this.point - this.lower) & MASK64) / scale;
    if (t >= 1n << BigInt(PRECISION)) throw new InvalidData("invalid data");
    const [symbol, c, p] = lookup(Number(t));
    this.lower = add64(this.lower, scale * BigInt(c));
    this.range = scale * BigInt(p);
    if (this.range < RENORM) {
      this.lower = (this.lower << WORD) & MASK64;
      this.range <<= WORD;
      this.point = (this.point << WORD) & MASK64;
      if (this.next < this.words.length) this.point |= BigInt(this.words[this.next++]);
    }
    return symbol;
  }
}

// -- tables (§3.2) ---------------------------------------------------------------------------

/** Fixed-point cumulatives (Int32Array of A + 1) of a row of integer frequencies summing to 2**16. */
export function cumulative(frequencies, frequencyBits = 16) {
  const size = frequencies.length;
  const free = 2 ** PRECISION - size;
  const unit = 2 ** frequencyBits;
  const cum = new Int32Array(size + 1);
  let partial = 0;
  for (let i = 0; i < size; i++) {
    cum[i] = Math.floor((partial * free) / unit) + i; // partial * free < 2**41: exact in doubles
    partial += frequencies[i];
  }
  cum[size] = 2 ** PRECISION;
  return cum;
}

/** The (c, p) of symbol i under cumulatives `cum`. */
export function interval(cum, i) {
  return [cum[i], cum[i + 1] - cum[i]];
}

/** A quantile lookup for cumulatives `cum` (binary search): t -> [i, c, p]. */
export function lookupIn(cum) {
  return (t) => {
    let lo = 0;
    let hi = cum.length - 2; // the answer lies in [lo, hi]
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (cum[mid] <= t) lo = mid;
      else hi = mid - 1;
    }
    return [lo, cum[lo], cum[lo + 1] - cum[lo]];
  };
}

/** The uniform table over 2**bits values: value v is (v * 2**(24 - bits), 2**(24 - bits)). */
export function uniform(bits) {
  const p = 2 ** (PRECISION - bits);
  return { interval: (v) => [v * p, p], lookup: (t) => [Math.floor(t / p), Math.floor(t / p) * p, p] };
}
