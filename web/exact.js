// The exact table set of integer bundles (docs/FORMAT.md §7.3-§7.4): every lookup table of
// lossless and near-lossless coding, built from integers and correctly rounded binary64 basic
// operations (+ - * /, floor, exact powers of two; no Math.exp, no FMA, a fixed order), so that
// JavaScript builds the same tables as Python (runtime/exact.py) bit for bit; and the per-symbol
// arithmetic on them (renormalisation, the posterior, reconstruction), integers below 2**53.

import { TOTAL } from "./ans.js";
import { crc32 } from "./container.js";

const LEVELS = 256;
// Grids of the integer contract (runtime/contract.py).
export const POSTERIOR_MEAN_BITS = 10;
export const MEAN_INDEX_RANGE = [-8192, 8192];
export const LOGVAR_INDEX_RANGE = [0, 2048];
export const LATENT_INPUT_BITS = 8;
export const LATENT_INPUT_LIMIT = 2048;
export const MEAN_SUBSTEPS = 32;
export const MIXTURE_MEAN_RANGE = [0, 8160];
export const LOG_SCALE_STEPS = 16;
export const LOG_SCALE_INDEX_RANGE = [0, 128];
export const LOGIT_STEPS = 16;
export const LOGIT_INDEX_RANGE = [-512, 512];

// -- exp_exact: Cody-Waite reduction, degree-13 Taylor polynomial (Horner), exact scaling -------

const INV_LN2 = 1.4426950408889634;
const LN2_HI = 0.6931471803691238;
const LN2_LO = 1.9082149292705877e-10;
const EXP_COEFFICIENTS = [
  1.0, 1.0, 0.5, 0.16666666666666666, 0.041666666666666664, 0.008333333333333333,
  0.001388888888888889, 0.0001984126984126984, 2.48015873015873e-05, 2.7557319223985893e-06,
  2.755731922398589e-07, 2.505210838544172e-08, 2.08767569878681e-09, 1.6059043836821613e-10,
];
export const EXP_LIMIT = 64;
// 2**k for |k| <= 128 by repeated doubling and halving (exact; Math.pow need not be).
const POW2 = (() => {
  const t = new Float64Array(257);
  t[128] = 1;
  for (let k = 1; k <= 128; k++) {
    t[128 + k] = t[127 + k] * 2;
    t[128 - k] = t[129 - k] / 2;
  }
  return t;
})();

/** e**x for |x| <= 64 by FORMAT.md's fixed sequence of binary64 operations (runtime/exact.py exp_exact). */
export function expExact(x) {
  if (!(Math.abs(x) <= EXP_LIMIT)) throw new RangeError(`expExact takes |x| <= ${EXP_LIMIT}`);
  const k = Math.floor(x * INV_LN2 + 0.5);
  const r = (x - k * LN2_HI) - k * LN2_LO;
  let p = EXP_COEFFICIENTS[13];
  for (let n = 12; n >= 0; n--) p = p * r + EXP_COEFFICIENTS[n];
  return p * POW2[128 + k];
}

// -- Phi, positions, buckets -----------------------------------------------------------------

export const PHI_STEP_BITS = 12;
export const PHI_CELLS = 69632; // 17 * 2**12: x_k = k / 4096 - 8.5, k = 0 .. PHI_CELLS
export const PHI_BITS = 28;
export const POSITION_BITS = 20;
const SUBCELL = 256; // 2**(POSITION_BITS - PHI_STEP_BITS)
export const POSITION_ORIGIN = 8912896; // 8.5 * 2**20
export const POSITION_END = PHI_CELLS * SUBCELL; // 17825792
const SIMPSON_SCALE = 1.6233002946021836e-05;

let phiCache = null;
/** PHI (Float64Array PHI_CELLS + 1, integers 0 .. 2**28): Phi by Simpson's rule, a sequential sum. */
export function phiTable() {
  if (phiCache) return phiCache;
  const n = PHI_CELLS;
  const f = new Float64Array(n + 1);
  for (let k = 0; k <= n; k++) {
    const x = (k - POSITION_ORIGIN / SUBCELL) / 4096;
    f[k] = expExact(-0.5 * (x * x));
  }
  const out = new Float64Array(n + 1);
  let total = 0;
  out[0] = Math.floor(total * SIMPSON_SCALE * 268435456 + 0.5);
  for (let k = 0; k < n; k++) {
    const x = (k - POSITION_ORIGIN / SUBCELL) / 4096;
    const mid = x + 1 / 8192;
    const fm = expExact(-0.5 * (mid * mid));
    total += (f[k] + 4.0 * fm) + f[k + 1];
    out[k + 1] = Math.floor(total * SIMPSON_SCALE * 268435456 + 0.5);
  }
  phiCache = out;
  return out;
}

/** Phi * 2**28 interpolated linearly at an integer position X (2**-20 units from -8.5), clamped. */
export function phiLin(table, position) {
  const x = Math.min(Math.max(position, 0), POSITION_END);
  const c = Math.min(Math.floor(x / SUBCELL), PHI_CELLS - 1);
  const r = x - c * SUBCELL;
  return table[c] + Math.floor(((table[c + 1] - table[c]) * r) / SUBCELL);
}

/** The smallest position X with phiLin(X) >= j * 2**(28 - L). */
export function quantile(table, j, levelsBits) {
  const target = j * 2 ** (PHI_BITS - levelsBits);
  let lo = 0;
  let hi = POSITION_END;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (phiLin(table, mid) >= target) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** A position as the decoder's int32 latent index (2**-8 units), rounded half up, clamped to +-2048. */
export function latentIndex(position) {
  const z = Math.floor((position - POSITION_ORIGIN + 2048) / 4096);
  return Math.min(Math.max(z, -LATENT_INPUT_LIMIT), LATENT_INPUT_LIMIT);
}

// -- 1 / sigma, pixel and weight tables --------------------------------------------------------

function sigmaInv() {
  const out = new Float64Array(2049);
  for (let l = 0; l <= 2048; l++) out[l] = Math.floor(expExact(12 - l / 128) * 1048576 + 0.5);
  return out;
}

/** G (Int32Array 129 * 32 * 511, C order [s][f][j]): the logistic components' cumulative counts. */
function pixelCdf() {
  const rows = 129 * MEAN_SUBSTEPS;
  const out = new Int32Array(rows * 511);
  for (let s = 0; s <= 128; s++) {
    const scale = expExact(-7 + s / LOG_SCALE_STEPS) * 127.5;
    for (let f = 0; f < MEAN_SUBSTEPS; f++) {
      const offset = f / MEAN_SUBSTEPS;
      const at = (s * MEAN_SUBSTEPS + f) * 511;
      let running = 0;
      for (let j = 0; j < 511; j++) {
        const t = (j - 255 + 0.5 - offset) / scale;
        const u = Math.min(Math.max(-t, -EXP_LIMIT), EXP_LIMIT);
        const cdf = 1.0 / (1.0 + expExact(u));
        const count = Math.floor(cdf * (TOTAL - LEVELS));
        running = j === 0 ? count : Math.max(running, count);
        out[at + j] = running;
      }
    }
  }
  return out;
}

function weightTable() {
  const out = new Float64Array(513);
  for (let d = 0; d <= 512; d++) out[d] = Math.max(Math.floor(expExact(-d / LOGIT_STEPS) * 1073741824), 1);
  return out;
}

// -- the table set -----------------------------------------------------------------------------

function int32Bytes(values) {
  const out = new Uint8Array(values.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setInt32(4 * i, values[i], true);
  return out;
}

function int64Bytes(values) {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) {
    const v = values[i]; // 0 <= v < 2**53
    view.setUint32(8 * i, v % 4294967296, true);
    view.setUint32(8 * i + 4, Math.floor(v / 4294967296), true);
  }
  return out;
}

/** CRC-32 (initial value 0) of a table's canonical little-endian bytes (`width` 4: int32, 8: int64). */
export function tableCrc(values, width = 4) {
  return crc32(width === 8 ? int64Bytes(values) : int32Bytes(values));
}

const cache = new Map();
let shared = null;

/**
 * The exact table set for `bucketBits` (cached): {padded (G with one leading 0 and 256 trailing
 * zeros), weight, sigmaInv, phi, edges (Float64Array 2**b - 1, interior edges in 2**-20 units),
 * centres (Int32Array 2**b), groupCentres (Int32Array 2**(b >> 1)), buckets, fine, groups,
 * fingerprint, latents(z), groupLatents(g)}.
 */
export function tables(bucketBits) {
  if (cache.has(bucketBits)) return cache.get(bucketBits);
  if (!shared) {
    const g = pixelCdf();
    const padded = new Int32Array(g.length + 1 + LEVELS);
    padded.set(g, 1);
    const weight = weightTable();
    const sigma = sigmaInv();
    const phi = phiTable();
    shared = { g, padded, weight, sigma, phi, crc: crc32(int64Bytes(sigma), crc32(int32Bytes(weight), crc32(int32Bytes(g)))) };
  }
  const { phi } = shared;
  const n = 2 ** bucketBits;
  const edges = new Float64Array(n - 1);
  for (let i = 1; i < n; i++) edges[i - 1] = quantile(phi, i, bucketBits) - POSITION_ORIGIN;
  const centres = new Int32Array(n);
  for (let i = 0; i < n; i++) centres[i] = latentIndex(quantile(phi, 2 * i + 1, bucketBits + 1));
  const half = bucketBits >> 1;
  const groupCentres = new Int32Array(2 ** half);
  for (let g = 0; g < groupCentres.length; g++) groupCentres[g] = latentIndex(quantile(phi, 2 * g + 1, half + 1));
  let crc = crc32(int32Bytes(phi), shared.crc);
  crc = crc32(int32Bytes(edges), crc);
  crc = crc32(int32Bytes(centres), crc);
  crc = crc32(int32Bytes(groupCentres), crc);
  const fine = 2 ** (bucketBits - half);
  // the interior edges at the groups' boundaries, E[g * fine], g = 0 .. groups (ends unused)
  const groupEdges = Float64Array.from({ length: 2 ** half + 1 }, (_, g) => (g > 0 && g < 2 ** half ? edges[g * fine - 1] : 0));
  const T = {
    groupEdges,
    bucketBits, padded: shared.padded, weight: shared.weight, sigmaInv: shared.sigma, phi, edges, centres, groupCentres,
    buckets: n, fine: 2 ** (bucketBits - half), groups: 2 ** half, fingerprint: crc,
    latents: (z) => Int32Array.from(z, (i) => centres[i]),
    groupLatents: (z) => Int32Array.from(z, (i) => groupCentres[i]),
  };
  cache.set(bucketBits, T);
  return T;
}

const clip = (v, [lo, hi]) => Math.min(Math.max(v, lo), hi);

/** Where C(v) = padded[first + v - 1] + v of a component starts, from its mean and log-scale indices (clipped). */
export function firstIndex(T, meanIndex, logScaleIndex) {
  const grid = clip(meanIndex, MIXTURE_MEAN_RANGE);
  const scale = clip(logScaleIndex, LOG_SCALE_INDEX_RANGE);
  const row = (scale * MEAN_SUBSTEPS + (grid % MEAN_SUBSTEPS)) * (2 * LEVELS - 1);
  return row + (LEVELS - 1) - Math.floor(grid / MEAN_SUBSTEPS) + 1;
}

/** The unnormalised weight of a component `drop` logit steps below its pixel's largest (clamped). */
export function weightOf(T, drop) {
  return T.weight[Math.min(drop, 512)];
}

/** Clipped logit index. */
export const logitIndex = (v) => clip(v, LOGIT_INDEX_RANGE);

// -- renormalisation ---------------------------------------------------------------------------

const RENORM_LIMIT = 2 ** 29;

/**
 * Non-decreasing integer cumulative values raw[0 .. n] (span below 2**53) -> the cumulative table
 * cum[0 .. n] of integer masses >= 1 summing to 2**24 (runtime/exact.py renorm, integers only):
 * a_i = raw_i - raw_0, T = a_n (T = 0: a_i = i); shift both right until T < 2**29;
 * q_i = floor(a_i * (2**24 - n) / T); cum_i = q_i + i.
 */
export function fromCumulative(raw, n, cum) {
  const base = raw[0];
  let total = raw[n] - base;
  const spread = TOTAL - n;
  if (total <= 0) {
    for (let i = 0; i <= n; i++) cum[i] = Math.floor((i * spread) / n) + i;
    return;
  }
  let div = 1;
  while (total >= RENORM_LIMIT) {
    total = Math.floor(total / 2);
    div *= 2;
  }
  if (div === 1) {
    for (let i = 0; i <= n; i++) cum[i] = Math.floor(((raw[i] - base) * spread) / total) + i;
  } else {
    for (let i = 0; i <= n; i++) cum[i] = Math.floor((Math.floor((raw[i] - base) / div) * spread) / total) + i;
  }
}

/** Non-negative integer weights w[0 .. n-1] -> masses (out[0 .. n-1], >= 1, summing to 2**24). */
export function categorical(weights, n, out) {
  const raw = scratchRaw.length > n ? scratchRaw : (scratchRaw = new Float64Array(2 * n + 2));
  const cum = scratchCum.length > n ? scratchCum : (scratchCum = new Float64Array(2 * n + 2));
  raw[0] = 0;
  for (let i = 0; i < n; i++) raw[i + 1] = raw[i] + weights[i];
  fromCumulative(raw, n, cum);
  for (let i = 0; i < n; i++) out[i] = cum[i + 1] - cum[i];
}
let scratchRaw = new Float64Array(64);
let scratchCum = new Float64Array(64);

// -- the posterior over latent buckets ---------------------------------------------------------

/** Q(z|x) of B images' D latents from an integer encoder's indices (FORMAT.md §7.4). */
export class Posterior {
  constructor(T, meanIndex, logvarIndex, D) {
    this.T = T;
    this.D = D;
    this.groups = T.groups;
    this.fine = T.fine;
    this.mu = Float64Array.from(meanIndex, (m) => clip(m, MEAN_INDEX_RANGE) * 1024); // 2**-20 units
    this.s = Float64Array.from(logvarIndex, (l) => T.sigmaInv[clip(l, LOGVAR_INDEX_RANGE)]);
    this.raw = new Float64Array(Math.max(this.groups, this.fine) + 1);
  }

  /** F_i * 2**28 at bucket edge i for latent j (image * D + d). */
  cdf(j, i) {
    const T = this.T;
    if (i <= 0) return phiLin(T.phi, 0);
    if (i >= T.buckets) return phiLin(T.phi, POSITION_END);
    const x = Math.floor(((T.edges[i - 1] - this.mu[j]) * this.s[j]) / 1048576) + POSITION_ORIGIN;
    return phiLin(T.phi, x);
  }

  /** The bucket group of each dimension's mean bucket (a chain's first image): Int32Array D. */
  modeGroups(b) {
    const T = this.T;
    const out = new Int32Array(this.D);
    for (let d = 0; d < this.D; d++) {
      const at = this.mu[b * this.D + d];
      // how many interior edges lie at or below the mean
      let lo = 0;
      let hi = T.edges.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (T.edges[mid] <= at) lo = mid + 1;
        else hi = mid;
      }
      out[d] = Math.floor(lo / T.fine);
    }
    return out;
  }

  /** The cumulative F at edges first, first + step, ... (n + 1 of them) of latent j into raw
   * (step = fine reads the groups' boundary edges from a compact copy: T.groupEdges). */
  _fill(j, first, step, n) {
    const { phi, buckets } = this.T;
    const edges = step === 1 ? this.T.edges : this.T.groupEdges;
    const offset = step === 1 ? -1 : 0;
    const mu = this.mu[j];
    const s = this.s[j];
    const raw = this.raw;
    const bottom = phi[0];
    const top = phi[PHI_CELLS];
    for (let t = 0; t <= n; t++) {
      const i = first + t * step;
      if (i <= 0) raw[t] = bottom;
      else if (i >= buckets) raw[t] = top;
      else {
        const x = Math.floor(((edges[step === 1 ? i + offset : t] - mu) * s) / 1048576) + POSITION_ORIGIN;
        if (x <= 0) raw[t] = bottom;
        else if (x >= POSITION_END) raw[t] = top;
        else {
          const c = x >>> 8; // x < 2**25: c <= PHI_CELLS - 1
          const a = phi[c];
          raw[t] = a + Math.floor(((phi[c + 1] - a) * (x - (c << 8))) / 256);
        }
      }
    }
  }

  groupTable(b, d, cum) {
    this._fill(b * this.D + d, 0, this.fine, this.groups);
    fromCumulative(this.raw, this.groups, cum);
  }

  withinTable(b, d, group, cum) {
    this._fill(b * this.D + d, group * this.fine, 1, this.fine);
    fromCumulative(this.raw, this.fine, cum);
  }
}

// -- near-lossless reconstruction --------------------------------------------------------------

export const RECONSTRUCTION_SHIFT = 20;

/**
 * Pixels (Uint8Array P) of image b's bins [lower, upper] under the mixture `L` (a bitsback
 * Likelihood), integers only (FORMAT.md §8.1, runtime/bitsback.py exact_reconstruct).
 */
export function reconstructFrom(L, b, lower, upper, maxError) {
  const P = L.P;
  const out = new Uint8Array(P);
  const width = 2 * maxError + 1;
  const m = new Float64Array(width);
  const shift = 2 ** RECONSTRUCTION_SHIFT;
  for (let p = 0; p < P; p++) {
    const lo = lower[p];
    const hi = upper[p];
    const pixel = b * P + p;
    let prev = Math.floor(L.mixtureCdf(pixel, lo) / shift);
    let den = 0;
    let num = 0;
    for (let o = 0; o < width; o++) {
      const v = Math.min(lo + o + 1, hi + 1);
      const next = Math.floor(L.mixtureCdf(pixel, v) / shift);
      m[o] = next - prev;
      prev = next;
      den += m[o];
      num += m[o] * o;
    }
    let value = den > 0 ? lo + Math.floor((2 * num + den) / (2 * den)) : Math.floor((lo + hi) / 2);
    const endMass = lo === 0 ? m[0] : m[hi - lo];
    if (den > 0 && (lo === 0 || hi === LEVELS - 1) && 2 * endMass >= den) value = lo === 0 ? 0 : LEVELS - 1;
    out[p] = Math.min(Math.max(value, Math.max(hi - maxError, 0)), Math.min(lo + maxError, LEVELS - 1));
  }
  return out;
}
