// Bits-back coding of lossless and near-lossless payloads for INTEGER bundles (docs/FORMAT.md
// §7, §8): chains, lanes and steps, the two-stage codes, the component bits back, a chain's
// first image, near-lossless bins and the single-image path, on web/ans.js. Every table comes
// from the exact tables of web/exact.js and the integer graphs' grid indices (model.js), so
// Node, browsers and Python build the same tables bit for bit.
//
// Per image x on a chain's ANS stack (last in, first out):
//     compress                                   decompress (exact reverse, last image first)
//     pop   z ~ Q(z|x)    latent buckets         pop   z under the prior (uniform buckets)
//     pop   k ~ Q(k|x,z)  component per pixel    pop   k under the mixture weights
//     push  x | z, k      bin per pixel          pop   x | z, k
//     push  k | z         mixture weights        push  k under Q(k|x,z)
//     push  z             uniform buckets        push  z under Q(z|x) (encoder on x)
//
// A context bundle (model.json "pixel_groups" G > 1, FORMAT.md §7.10) codes the pixels in G
// groups: group 0 under the decoder's mixture, group g >= 1 under context.onnx's given the pixels
// of groups 0 .. g-1. Components are popped group G-1 first, bins pushed group G-1 first; decoding
// pops group 0 first (lossless only: near-lossless is refused, as Python does).

import { AnsCoder, AnsError, TOTAL } from "./ans.js";
import { concat, crc32, decodeVarint, encodeVarint } from "./container.js";
import { ContainerError, InputError } from "./errors.js";
import * as exact from "./exact.js";

export const LATENT_BUCKET_BITS = 16;
export const MIN_BUCKET_BITS = 6;
export const MAX_BUCKET_BITS = 16;
export const MAX_CHAINS = 64;
export const MIN_CHAIN_IMAGES = 32;
export const NEAR_LOSSLESS_CHAIN_IMAGES = 256;
export const LANES = 2;
export const LEVELS = 256;
export const MAX_BIN_ERROR = 32;
export const MAX_LOSSLESS_IMAGES_PER_BYTE = 8;
export const MAX_NEAR_LOSSLESS_IMAGES_PER_BYTE = 1;
export const KNOWN_CHECK_BYTES = 2;
/** Dry-chain check (lossless only): see decodeLane. */
export const MAX_DRY_STEPS = 4;
const POP_SLACK_BITS = 64;
const POP_SLACK_PER_SYMBOL = 0.01;

const isqrt = (n) => {
  let r = Math.floor(Math.sqrt(n));
  while (r * r > n) r--;
  while ((r + 1) * (r + 1) <= n) r++;
  return r;
};

// -- bins ------------------------------------------------------------------------------------

/** The bins of maximum error K (0 = lossless: one level each), FORMAT.md §8 "Bins". */
export function binning(maxError = 0) {
  if (!(Number.isInteger(maxError) && maxError >= 0 && maxError <= MAX_BIN_ERROR)) {
    throw new InputError(`max error must be an integer in 0..${MAX_BIN_ERROR}, got ${maxError}`);
  }
  const k = maxError;
  let starts;
  if (k === 0) starts = Array.from({ length: LEVELS }, (_, i) => i);
  else {
    starts = [0];
    for (let s = k + 1; s < LEVELS - 1 - k; s += 2 * k + 1) starts.push(s);
    starts.push(LEVELS - 1 - k);
  }
  const bins = starts.length;
  const edges = Int32Array.from([...starts, LEVELS]);
  const ends = Int32Array.from(starts, (_, i) => edges[i + 1] - 1);
  const ofLevel = new Uint8Array(LEVELS);
  for (let j = 0; j < bins; j++) ofLevel.fill(j, edges[j], edges[j + 1]);
  const representative = Uint8Array.from(starts, (s, j) =>
    k === 0 ? s : s === 0 ? 0 : ends[j] === LEVELS - 1 ? LEVELS - 1 : (s + ends[j]) >> 1);
  const group = isqrt(bins - 1) + 1;
  return {
    maxError: k, bins, starts: Int32Array.from(starts), ends, edges, ofLevel, representative, group,
    groups: Math.ceil(bins / group), lossless: k === 0,
    chainImages: k === 0 ? MIN_CHAIN_IMAGES : NEAR_LOSSLESS_CHAIN_IMAGES,
    maxImagesPerByte: k === 0 ? MAX_LOSSLESS_IMAGES_PER_BYTE : MAX_NEAR_LOSSLESS_IMAGES_PER_BYTE,
    kind: k === 0 ? "lossless" : "near-lossless",
  };
}

/** Chains for `count` images: clamp(floor(count / perChain), 1, MAX_CHAINS), 0 for none. */
export function chainCount(count, perChain = MIN_CHAIN_IMAGES) {
  if (count <= 0) return 0;
  return Math.max(1, Math.min(MAX_CHAINS, Math.floor(count / perChain)));
}

/** The chains of each lane: chain c runs in lane c mod LANES. */
export function lanes(chains) {
  return Array.from({ length: Math.min(LANES, chains) }, (_, lane) => {
    const out = [];
    for (let c = lane; c < chains; c += LANES) out.push(c);
    return out;
  });
}

/** [step, image indices] of a lane in compress order; image = step * chains + chain. */
function steps(lane, count, chains) {
  const out = [];
  for (let step = 0; step < Math.ceil(count / chains); step++) {
    const images = lane.map((c) => step * chains + c).filter((i) => i < count);
    if (images.length) out.push([step, images]);
  }
  return out;
}

// -- the likelihood of one step ---------------------------------------------------------------

/**
 * The decoder's mixture for B images of P pixels and K components, from an integer decoder's
 * grid indices (Int32Array B*K*P each, [image][component][pixel]).
 */
export class Likelihood {
  constructor(T, out, batch, pixels, components, bins) {
    this.T = T;
    this.bins = bins;
    this.B = batch;
    this.P = pixels;
    this.K = components;
    this.single = components === 1;
    const n = batch * pixels;
    // Per (image, pixel): component-major small arrays [K] (offset (b*P + p) * K).
    this.first = new Int32Array(n * components); // where C_k(v) = padded[first + v - 1] + v
    this.weightMass = new Float64Array(n * components); // the mixture weight table's masses
    this.prediction = new Int32Array(n);
    const weights = new Float64Array(components);
    const masses = new Float64Array(components);
    for (let b = 0; b < batch; b++) {
      for (let p = 0; p < pixels; p++) {
        const at = (b * pixels + p) * components;
        let top = -Infinity;
        let heaviest = 0;
        for (let k = 0; k < components; k++) {
          const g = (b * components + k) * pixels + p;
          this.first[at + k] = exact.firstIndex(T, out.mean[g], out.logScale[g]);
          const logit = exact.logitIndex(out.logit[g]);
          if (logit > top) {
            top = logit;
            heaviest = k;
          }
        }
        for (let k = 0; k < components; k++) {
          weights[k] = exact.weightOf(T, top - exact.logitIndex(out.logit[(b * components + k) * pixels + p]));
        }
        exact.categorical(weights, components, masses);
        this.weightMass.set(masses, at);
        const grid = Math.min(Math.max(out.mean[(b * components + heaviest) * pixels + p], 0), exact.MIXTURE_MEAN_RANGE[1]);
        this.prediction[b * pixels + p] = (grid + 16) >> 5;
      }
    }
  }

  /** The mixture's cumulative M(v) = sum_k weight mass_k * C_k(v) of pixel `pixel` (b * P + p),
   * v = 0 .. 256: 0 .. 2**48, exact. */
  mixtureCdf(pixel, v) {
    let m = 0;
    for (let k = 0; k < this.K; k++) m += this.weightMass[pixel * this.K + k] * this.cdf(this.first[pixel * this.K + k], v);
    return m;
  }

  /** C_k(v) for the component table at `first` (v = 0 .. 256). */
  cdf(first, v) {
    if (v <= 0) return 0;
    if (v >= LEVELS) return TOTAL;
    return this.T.padded[first + v - 1] + v;
  }
}

// -- pixel groups (context bundles) ---------------------------------------------------------

/** Flat (C-H-W) pixel positions of each pixel group, group 0 first (runtime/bitsback.py
 * _group_positions): pixel (r, c), all of its channels, is in group tile[r mod R][c mod C];
 * within a group, positions keep their C-H-W order. One group of every position without groups. */
export function groupPositions(groups, tile, [channels, height, width]) {
  const size = channels * height * width;
  if (groups === 1) return [Int32Array.from({ length: size }, (_, i) => i)];
  const lists = Array.from({ length: groups }, () => []);
  for (let i = 0; i < size; i++) {
    const r = Math.floor(i / width) % height;
    const c = i % width;
    lists[tile[r % tile.length][c % tile[0].length]].push(i);
  }
  return lists.map((list) => Int32Array.from(list));
}

/** Mixture indices ({logit, mean, logScale}: B*K*P each) at the flat pixel `positions` only:
 * B*K*positions.length each (runtime/bitsback.py _at_pixels). */
function atPixels(out, positions, batch, components, pixels) {
  const n = positions.length;
  const pick = (a) => {
    const got = new Int32Array(batch * components * n);
    for (let row = 0; row < batch * components; row++) {
      for (let p = 0; p < n; p++) got[row * n + p] = a[row * pixels + positions[p]];
    }
    return got;
  };
  return { logit: pick(out.logit), mean: pick(out.mean), logScale: pick(out.logScale) };
}

/**
 * The pixel groups of one encode or decode with `model` (runtime/bitsback.py _Coding): their
 * positions, the known mask of each group (1 at the pixels of the groups before it) and the
 * likelihood of a group given a step's decoder outputs and what is known of its images.
 * InputError for near-lossless bins with groups (Python's message).
 */
class Groups {
  constructor(model, T, bins) {
    this.model = model;
    this.T = T;
    this.bins = bins;
    this.P = model.imageSize;
    const groups = model.pixelGroups ?? 1;
    this.positions = groupPositions(groups, model.pixelTile, model.imageShape);
    this.count = this.positions.length;
    if (this.count > 1 && !bins.lossless) {
      throw new InputError(`${model.bundle.name} codes pixels in groups, for lossless compression only; ` +
        "pick another model for near-lossless (--max-error)");
    }
    if (this.count > 1 && !model.context) {
      throw new InputError(`${model.bundle.name} codes pixels in groups but has no integer context graph loaded`);
    }
    this.known = this.positions.map((_, g) => {
      const mask = new Uint8Array(this.P);
      for (const positions of this.positions.slice(0, g)) for (const i of positions) mask[i] = 1;
      return mask;
    });
  }

  /** The Likelihood of group `g` of a step's `batch` images: the decoder's `out` for group 0 (every
   * pixel without groups), else the context graph's given `pixels` (Uint8Array batch * P; only
   * the groups before g are read). */
  async likelihood(out, g, pixels, batch) {
    const { model, T, bins, P } = this;
    if (this.count === 1) return new Likelihood(T, out, batch, P, model.components, bins);
    const params = g === 0 ? out : await model.contextIndices(out, pixels, this.known[g]);
    const positions = this.positions[g];
    return new Likelihood(T, atPixels(params, positions, batch, model.components, P), batch, positions.length,
      model.components, bins);
  }

  /** Image b's values (Uint8Array) of group g, out of a step's B * P values. */
  of(x, b, g) {
    const positions = this.positions[g];
    if (this.count === 1) return x.subarray(b * this.P, (b + 1) * this.P);
    return Uint8Array.from(positions, (i) => x[b * this.P + i]);
  }
}

// -- coding of pixels ------------------------------------------------------------------------

// Reused buffers: components are at most bundle.js's MAX_COMPONENTS, a stage at most 2**8 + 1 entries.
const scratch = { cum: new Float64Array(1 << 9), joint: new Float64Array(257), masses: new Float64Array(257) };

/** Q(k|bin, z) of pixel (b, p) as cumulative masses into `cum` (K + 1 entries); returns argmax k. */
function componentPosterior(L, b, p, symbol, cum) {
  const { bins, K, T } = L;
  const lo = bins.starts[symbol];
  const hi = bins.ends[symbol];
  const at = (b * L.P + p) * K;
  const joint = scratch.joint;
  let best = 0;
  for (let k = 0; k < K; k++) {
    const first = L.first[at + k];
    const top = hi === LEVELS - 1 ? TOTAL - LEVELS : T.padded[first + hi];
    const bottom = lo === 0 ? 0 : T.padded[first + lo - 1];
    joint[k] = L.weightMass[at + k] * (top - bottom + (hi - lo + 1));
    if (joint[k] > joint[best]) best = k;
  }
  exact.categorical(joint, K, scratch.masses);
  cum[0] = 0;
  for (let k = 0; k < K; k++) cum[k + 1] = cum[k] + scratch.masses[k];
  return best;
}

/** Stage 1 of a bin under component table `first`: cumulative (groups + 1 entries) into `cum`. */
function groupTable(L, first, cum) {
  const { bins, T } = L;
  cum[0] = 0;
  for (let g = 1; g < bins.groups; g++) {
    const bound = bins.edges[g * bins.group];
    cum[g] = T.padded[first + bound - 1] + bound;
  }
  cum[bins.groups] = TOTAL;
}

/** Stage 2, the bin within `group`: cumulative (group + 1 entries) into `cum`. */
function withinTable(L, first, group, cum) {
  const { bins, T } = L;
  const raw = scratch.cum;
  for (let j = 0; j <= bins.group; j++) {
    const level = bins.edges[Math.min(group * bins.group + j, bins.bins)];
    raw[j] = level === 0 ? 0 : level === LEVELS ? TOTAL : T.padded[first + level - 1] + level;
  }
  exact.fromCumulative(raw, bins.group, cum);
}

/** Push the bins (Uint8Array P) and, unless one component, the components (Int32Array P) of image b. */
function pushPixels(coder, L, b, symbols, k) {
  const { bins, P, K } = L;
  const cum = new Float64Array(Math.max(bins.group, bins.groups, K) + 1);
  const at = b * P;
  for (let p = P - 1; p >= 0; p--) {
    const first = L.first[(at + p) * K + k[p]];
    withinTable(L, first, Math.floor(symbols[p] / bins.group), cum);
    coder.pushCumulative(symbols[p] % bins.group, cum);
  }
  for (let p = P - 1; p >= 0; p--) {
    groupTable(L, L.first[(at + p) * K + k[p]], cum);
    coder.pushCumulative(Math.floor(symbols[p] / bins.group), cum);
  }
  if (!L.single) {
    for (let p = P - 1; p >= 0; p--) {
      weightCumulative(L, at + p, cum);
      coder.pushCumulative(k[p], cum);
    }
  }
}

function weightCumulative(L, pixel, cum) {
  cum[0] = 0;
  for (let k = 0; k < L.K; k++) cum[k + 1] = cum[k] + L.weightMass[pixel * L.K + k];
}

const information = (cum, s) => 24 - Math.log2(cum[s + 1] - cum[s]);

/** Pop image b's components and bins: {symbols Uint8Array P, k Int32Array P, popped bits}. */
function popPixels(coder, L, b) {
  const { bins, P, K } = L;
  const cum = new Float64Array(Math.max(bins.group, bins.groups, K) + 1);
  const at = b * P;
  const k = new Int32Array(P);
  let popped = 0;
  if (!L.single) {
    for (let p = 0; p < P; p++) {
      weightCumulative(L, at + p, cum);
      k[p] = coder.popCumulative(cum, 0, K);
      popped += information(cum, k[p]);
    }
  }
  const group = new Int32Array(P);
  for (let p = 0; p < P; p++) {
    groupTable(L, L.first[(at + p) * K + k[p]], cum);
    group[p] = coder.popCumulative(cum, 0, bins.groups);
    popped += information(cum, group[p]);
  }
  const symbols = new Uint8Array(P);
  for (let p = 0; p < P; p++) {
    withinTable(L, L.first[(at + p) * K + k[p]], group[p], cum);
    const rest = coder.popCumulative(cum, 0, bins.group);
    popped += information(cum, rest);
    symbols[p] = Math.min(group[p] * bins.group + rest, bins.bins - 1);
  }
  return { symbols, k, popped };
}

// -- coding of latents -----------------------------------------------------------------------

/** Pop image b's latent buckets under Q(z|x) (posterior of its step): Int32Array D. */
function popLatent(coder, Q, b) {
  const D = Q.D;
  const cum = new Float64Array(Math.max(Q.groups, Q.fine) + 1);
  const group = new Int32Array(D);
  for (let d = 0; d < D; d++) {
    Q.groupTable(b, d, cum);
    group[d] = coder.popCumulative(cum, 0, Q.groups);
  }
  const z = new Int32Array(D);
  for (let d = 0; d < D; d++) {
    Q.withinTable(b, d, group[d], cum);
    z[d] = group[d] * Q.fine + coder.popCumulative(cum, 0, Q.fine);
  }
  return z;
}

/** Push image b's latent buckets z under Q(z|x): the exact reverse of popLatent. */
function pushLatent(coder, Q, b, z) {
  const D = Q.D;
  const cum = new Float64Array(Math.max(Q.groups, Q.fine) + 1);
  for (let d = D - 1; d >= 0; d--) {
    Q.withinTable(b, d, Math.floor(z[d] / Q.fine), cum);
    coder.pushCumulative(z[d] % Q.fine, cum);
  }
  for (let d = D - 1; d >= 0; d--) {
    Q.groupTable(b, d, cum);
    coder.pushCumulative(Math.floor(z[d] / Q.fine), cum);
  }
}

// -- network calls of one step ---------------------------------------------------------------

async function posteriorOf(model, T, seen) {
  const { meanIndex, logvarIndex } = await model.encodeIndices(seen);
  return new exact.Posterior(T, meanIndex, logvarIndex, model.latentDim);
}

function gather(data, images, size) {
  const out = new Uint8Array(images.length * size);
  images.forEach((i, j) => out.set(data.subarray(i * size, (i + 1) * size), j * size));
  return out;
}

// -- payload ---------------------------------------------------------------------------------

/** The pixel checksum: CRC-32 of the bins (uint8), seeded with the exact tables' fingerprint. */
const checksumOf = (symbols, T) => crc32(symbols, T.fingerprint);

/**
 * Encode uint8 images (count * P, C-H-W order, image after image) into a payload: losslessly
 * (maxError 0) or as bins of maxError. Returns {payload Uint8Array, chains, initialBits, codedBits}.
 */
export async function encode(model, images, count, { maxError = 0, bucketBits = LATENT_BUCKET_BITS, progress } = {}) {
  const bins = binning(maxError);
  const T = exact.tables(bucketBits);
  const P = model.imageSize;
  const chains = chainCount(count, bins.chainImages);
  const symbols = new Uint8Array(count * P);
  for (let i = 0; i < symbols.length; i++) symbols[i] = bins.ofLevel[images[i]];
  // The posterior sees what decoding knows before it pushes the bits back: the bins.
  const seen = bins.lossless ? images : symbols.map((s) => bins.representative[s]);
  const groups = new Groups(model, T, bins);
  const coders = Array.from({ length: chains }, () => new AnsCoder());
  let initialBits = 0;
  for (const lane of lanes(chains)) {
    for (const [step, members] of steps(lane, count, chains)) {
      const Q = await posteriorOf(model, T, gather(seen, members, P));
      const stacks = members.map((_, j) => coders[lane[j]]);
      const zs = stacks.map((coder, j) => (step === 0 ? Q.modeGroups(j) : popLatent(coder, Q, j)));
      const latentIndex = new Int32Array(members.length * Q.D);
      zs.forEach((z, j) => latentIndex.set(step === 0 ? T.groupLatents(z) : T.latents(z), j * Q.D));
      const out = await model.decodeIndices(latentIndex);
      // every group's likelihood is known here (the images are): the step's bins, all of them known
      const x = gather(symbols, members, P);
      const likelihoods = [];
      for (let g = 0; g < groups.count; g++) likelihoods.push(await groups.likelihood(out, g, x, members.length));
      const cum = new Float64Array(model.components + 1);
      stacks.forEach((coder, j) => {
        // components: group G-1 first (a chain's first image, or one component: the most probable)
        const ks = [];
        for (let g = groups.count - 1; g >= 0; g--) {
          const L = likelihoods[g];
          const xg = groups.of(x, j, g);
          const k = new Int32Array(L.P);
          for (let p = 0; p < L.P; p++) {
            const best = componentPosterior(L, j, p, xg[p], cum);
            k[p] = step === 0 || L.single ? best : coder.popCumulative(cum, 0, L.K);
          }
          ks[g] = k;
        }
        for (let g = groups.count - 1; g >= 0; g--) pushPixels(coder, likelihoods[g], j, groups.of(x, j, g), ks[g]);
        const z = zs[j];
        const n = step === 0 ? T.buckets / T.fine : T.buckets;
        for (let d = z.length - 1; d >= 0; d--) coder.pushUniform(z[d], n);
      });
      if (step === 0) initialBits += stacks.reduce((a, s) => a + s.numValidBits(), 0);
      if (progress) progress(members.length);
    }
  }
  const streams = coders.map((c) => c.getCompressed());
  const header = [bucketBits, ...encodeVarint(chains)];
  const check = checksumOf(symbols, T);
  header.push(check & 0xff, (check >>> 8) & 0xff, (check >>> 16) & 0xff, check >>> 24);
  for (const s of streams.slice(0, -1)) header.push(...encodeVarint(s.length));
  const parts = [Uint8Array.from(header), ...streams.map((s, i) => wordsToBytes(s, i === streams.length - 1))];
  const payload = concat(parts);
  if (count > bins.maxImagesPerByte * payload.length) {
    throw new InputError(`${count} images compressed to ${payload.length} bytes, below the format's floor`);
  }
  return { payload, count, chains, initialBits, codedBits: coders.reduce((a, c) => a + c.numValidBits(), 0) };
}

/** Little-endian bytes of 32-bit words; `trim`: without the top word's zero high bytes. */
export function wordsToBytes(words, trim) {
  const out = new Uint8Array(words.length * 4);
  const view = new DataView(out.buffer);
  words.forEach((w, i) => view.setUint32(4 * i, w, true));
  let n = out.length;
  if (trim) while (n > 0 && out[n - 1] === 0) n--;
  return out.subarray(0, n);
}

/** An ANS coder over little-endian bytes, zero-padded to whole words; ContainerError if refused. */
export function stackOf(bytes, kind) {
  const padded = new Uint8Array(Math.ceil(bytes.length / 4) * 4);
  padded.set(bytes);
  const view = new DataView(padded.buffer);
  const words = new Uint32Array(padded.length / 4);
  for (let i = 0; i < words.length; i++) words[i] = view.getUint32(4 * i, true);
  try {
    return new AnsCoder(words);
  } catch (e) {
    if (e instanceof AnsError) throw new ContainerError(`${kind} payload is damaged (${e.message})`);
    throw e;
  }
}


/** The fixed fields of a payload, checked against the image count (FORMAT.md §7). */
export function readPayloadHeader(payload, count, bins) {
  const kind = bins.kind;
  if (payload.length < 1) throw new ContainerError(`${kind} payload is truncated (empty)`);
  const bits = payload[0];
  if (!(bits >= MIN_BUCKET_BITS && bits <= MAX_BUCKET_BITS)) {
    throw new ContainerError(`${kind} payload is damaged (latent bucket bits ${bits} not in ${MIN_BUCKET_BITS}..${MAX_BUCKET_BITS})`);
  }
  let [chains, pos] = decodeVarint(payload, 1, payload.length, "chain count");
  if (count < 0 || count > bins.maxImagesPerByte * payload.length) {
    throw new ContainerError(`${kind} payload is damaged (${count} images cannot fit in ${payload.length} bytes)`);
  }
  const expected = chainCount(count, bins.chainImages);
  if (chains !== expected) throw new ContainerError(`${kind} payload is damaged (${chains} chains for ${count} images, expected ${expected})`);
  if (pos + 4 > payload.length) throw new ContainerError(`${kind} payload is truncated (inside the pixel checksum)`);
  const checksum = new DataView(payload.buffer, payload.byteOffset + pos, 4).getUint32(0, true);
  pos += 4;
  const words = [];
  for (let c = 0; c < chains - 1; c++) {
    let n;
    [n, pos] = decodeVarint(payload, pos, payload.length, "chain length");
    if (n < 1) throw new ContainerError(`${kind} payload is damaged (empty chain)`);
    words.push(n);
  }
  const rest = payload.length - pos - 4 * words.reduce((a, b) => a + b, 0);
  if (chains && rest < 1) throw new ContainerError(`${kind} payload is truncated (chain data shorter than its lengths)`);
  if (!chains && rest) throw new ContainerError(`${kind} payload is damaged (data after an empty header)`);
  return { bucketBits: bits, chains, checksum, words, dataOffset: pos };
}

/**
 * The bins (Uint8Array count * P; the exact pixels when lossless) of a payload made by `encode`
 * with this model and maxError. `onDecoded(images, symbols, L)` sees each step's images, their
 * bins and the Likelihood at their latents (near-lossless reconstruction). ContainerError on damage.
 */
export async function decode(model, payload, count, { maxError = 0, progress, onDecoded } = {}) {
  const bins = binning(maxError);
  const kind = bins.kind;
  const header = readPayloadHeader(payload, count, bins);
  const T = exact.tables(header.bucketBits);
  const P = model.imageSize;
  const out = new Uint8Array(count * P);
  if (count === 0) return out;
  const coders = [];
  let pos = header.dataOffset;
  for (const n of [...header.words, null]) {
    const raw = n === null ? payload.subarray(pos) : payload.subarray(pos, pos + 4 * n);
    pos += raw.length;
    coders.push(stackOf(raw, kind));
  }
  const groups = new Groups(model, T, bins);
  const D = model.latentDim;
  for (const lane of lanes(header.chains)) {
    const dry = new Int32Array(lane.length);
    for (const [step, members] of steps(lane, count, header.chains).reverse()) {
      const stacks = members.map((_, j) => coders[lane[j]]);
      const available = stacks.map((s) => s.numValidBits());
      const n = step === 0 ? T.buckets / T.fine : T.buckets;
      const zs = stacks.map((coder) => Int32Array.from({ length: D }, () => coder.popUniform(n)));
      const latentIndex = new Int32Array(members.length * D);
      zs.forEach((z, j) => latentIndex.set(step === 0 ? T.groupLatents(z) : T.latents(z), j * D));
      const decoderOut = await model.decodeIndices(latentIndex);
      // group after group, each under the likelihood the groups before it give
      const x = new Uint8Array(members.length * P);
      const likelihoods = [];
      const components = []; // [group][image]: Int32Array of the group's pixels
      const popped = new Float64Array(members.length);
      for (let g = 0; g < groups.count; g++) {
        const L = await groups.likelihood(decoderOut, g, x, members.length);
        const positions = groups.positions[g];
        components.push(stacks.map((coder, j) => {
          const got = popPixels(coder, L, j);
          for (let p = 0; p < positions.length; p++) x[j * P + positions[p]] = got.symbols[p];
          popped[j] += got.popped;
          return got.k;
        }));
        likelihoods.push(L);
      }
      const symbolCount = D + P * (likelihoods[0].single ? 1 : 3);
      popped.forEach((bits, j) => {
        const total = bits + D * Math.log2(n);
        const short = total > available[j] + POP_SLACK_BITS + POP_SLACK_PER_SYMBOL * symbolCount;
        dry[j] = short ? dry[j] + 1 : 0;
      });
      if (bins.lossless && dry.some((d) => d >= MAX_DRY_STEPS)) {
        throw new ContainerError(`${kind} payload is damaged (its data ends long before its images do)`);
      }
      members.forEach((i, j) => out.set(x.subarray(j * P, (j + 1) * P), i * P));
      // (near-lossless, which has no groups: the decoder's Likelihood of every pixel)
      if (onDecoded) onDecoded(members, members.map((_, j) => x.subarray(j * P, (j + 1) * P)), likelihoods[0]);
      if (step > 0) {
        const cum = new Float64Array(model.components + 1);
        likelihoods.forEach((L, g) => {
          if (L.single) return;
          stacks.forEach((coder, j) => {
            const xg = groups.of(x, j, g);
            const k = components[g][j];
            for (let p = L.P - 1; p >= 0; p--) {
              componentPosterior(L, j, p, xg[p], cum);
              coder.pushCumulative(k[p], cum);
            }
          });
        });
        const seen = new Uint8Array(members.length * P);
        for (let i = 0; i < seen.length; i++) seen[i] = bins.representative[x[i]];
        const Q = await posteriorOf(model, T, seen);
        stacks.forEach((coder, j) => pushLatent(coder, Q, j, zs[j]));
      }
      if (progress) progress(members.length);
    }
  }
  if (!coders.every((c) => c.isEmpty())) throw new ContainerError(`${kind} payload is damaged (a chain did not end where it should)`);
  if (checksumOf(out, T) !== header.checksum) {
    throw new ContainerError(`${kind} payload does not decode to its pixel checksum: the data is damaged, or it was ` +
      "compressed on a machine whose model arithmetic differs from this one's (see docs/FORMAT.md)");
  }
  return out;
}
