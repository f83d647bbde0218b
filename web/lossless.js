// Lossless (mode 1) and near-lossless (mode 2) containers of INTEGER bundles (docs/FORMAT.md §7,
// §8; "exact tables", container version 3): framing, the single-image near-lossless path (a lossy
// latent plus bins centred on the model's prediction) and reconstruction. The coding itself is
// web/bitsback.js (with the pixel groups of an integer context bundle, lossless only); the tables
// web/exact.js.

import * as container from "./container.js";
import * as bitsback from "./bitsback.js";
import * as exact from "./exact.js";
import { AnsCoder } from "./ans.js";
import { ContainerError, InputError } from "./errors.js";
import { checkTableSet, decodePayloads } from "./codec.js";
import { latentIndices } from "./model.js";

const { LEVELS } = bitsback;

/** "max error must be ..." unless K is an integer in 1..MAX_ERROR (Python's check_max_error). */
export function checkMaxError(value) {
  if (!(Number.isInteger(value) && value >= 1 && value <= container.MAX_ERROR)) {
    throw new InputError(`max error must be an integer from 1 to ${container.MAX_ERROR} (pixel levels), got ${value}`);
  }
  return value;
}

/** A version-3 container of one lossless or near-lossless payload (framing of FORMAT.md §7, §8). */
export function packExact(mode, fingerprint, geometry, count, payload, { maxError = 0, level = 0 } = {}) {
  const multi = count > 1;
  const head = [container.MAGIC,
    (container.EXACT_VERSION << container.VERSION_SHIFT) | (mode << container.MODE_SHIFT) | (multi ? container.MULTI_BIT : 0),
    (level << container.QUALITY_SHIFT) | container.fingerprintPrefix(fingerprint)];
  if (multi) head.push(...container.encodeVarint(count));
  if (mode === container.MODE_NEAR_LOSSLESS) head.push(maxError);
  const body = new Uint8Array(head.length + payload.length);
  body.set(head);
  body.set(payload, head.length);
  const out = new Uint8Array(body.length + container.CRC_BYTES);
  out.set(body);
  new DataView(out.buffer).setUint32(body.length, container.checksum(body, fingerprint, geometry));
  return out;
}

/**
 * Lossless and near-lossless compression with an integer bundle (model.js, `model.integer`).
 *
 *     const codec = await ExactCodec.create(model);               // lossless
 *     const codec = await ExactCodec.create(model, { maxError: 4 }); // near-lossless, K = 4
 *     const bytes = await codec.compress(pixels);                 // one .evz of every image
 *     const images = await codec.decompress(bytes);               // Uint8Array N*C*H*W
 */
export class ExactCodec {
  constructor(model, tables, { maxError = 0 } = {}) {
    if (!model.integer) {
      throw new InputError(`${model.bundle.name} computes in floating point: lossless and near-lossless containers in ` +
        "JavaScript need an integer bundle (model.json \"arithmetic\": \"integer\"; docs/FORMAT.md §7)");
    }
    this.model = model;
    this.tables = tables; // the bundle's lossy codec tables, or null
    this.maxError = maxError ? checkMaxError(maxError) : 0;
    this.fingerprint = model.bundle.fingerprint;
  }

  static async create(model, options) {
    const tables = model.bundle.files.codec ? await model.bundle.codecTables() : null;
    return new ExactCodec(model, tables, options);
  }

  get mode() {
    return this.maxError ? container.MODE_NEAR_LOSSLESS : container.MODE_LOSSLESS;
  }

  /** One container (Uint8Array) of every image. */
  async compress(pixels, { progress } = {}) {
    const { data, count } = this.model.checkImages(pixels);
    if (count === 0) throw new InputError("no images to compress");
    if (this.maxError && count === 1) return (await this.compressEach(data))[0];
    const { payload } = await bitsback.encode(this.model, data, count, { maxError: this.maxError, progress });
    return packExact(this.mode, this.fingerprint, this.model.imageShape, count, payload, { maxError: this.maxError });
  }

  /** One single-image container per image (`--split`). */
  async compressEach(pixels) {
    const { data, count } = this.model.checkImages(pixels);
    const size = this.model.imageSize;
    const out = [];
    for (let i = 0; i < count; i++) {
      const image = data.subarray(i * size, (i + 1) * size);
      if (!this.maxError || !this.tables) {
        const { payload } = await bitsback.encode(this.model, image, 1, { maxError: this.maxError });
        out.push(packExact(this.mode, this.fingerprint, this.model.imageShape, 1, payload, { maxError: this.maxError }));
      } else {
        const [level, payload] = await this.#single(image);
        out.push(packExact(this.mode, this.fingerprint, this.model.imageShape, 1, payload, { maxError: this.maxError, level }));
      }
    }
    return out;
  }

  /** [level nibble, payload] of one image: the shortest over the lossy levels (FORMAT.md §8). */
  async #single(image) {
    const { mean } = await this.model.encode(image);
    let best = null;
    for (const table of this.tables.qualities) {
      if (table.index >= container.MAX_QUALITY_INDEX) continue;
      const u = table.symbols(mean);
      const latents = new Float32Array(this.model.latentDim);
      table.latents(u, latents, 0);
      const head = table.encode(u);
      const out = await this.model.decodeIndices(latentIndices(latents));
      const tail = encodeKnown(likelihoodOf(this.model, out), image, this.maxError);
      const payload = container.concat([Uint8Array.from(container.encodeVarint(head.length)), head, tail]);
      if (best === null || payload.length < best[1].length) best = [table.index + 1, payload];
    }
    return best;
  }

  /** Parse and verify a container of this model: the parsed container. */
  open(bytes) {
    return container.openFor(bytes, this.fingerprint, this.model.imageShape);
  }

  /** What a container says about itself, checked against this model (without decoding). */
  describe(bytes) {
    return container.describe(bytes, this.fingerprint, this.model.imageShape);
  }

  /** The images (Uint8Array N*C*H*W) of a lossless or near-lossless container of this model. */
  async decompress(bytes, { indices, progress } = {}) {
    const parsed = this.open(bytes);
    const { header } = parsed;
    if (header.mode === container.MODE_LOSSY) {
      throw new InputError("a lossy container: decode it with the lossy codec (Codec), not ExactCodec");
    }
    checkTableSet(header, this.model);
    if (header.mode === container.MODE_LOSSLESS && header.quality !== 0) {
      throw new ContainerError(`container is damaged (quality index ${header.quality} in a lossless container)`);
    }
    const payload = parsed.payload(0);
    const size = this.model.imageSize;
    let pixels;
    if (header.mode === container.MODE_LOSSLESS) {
      pixels = await bitsback.decode(this.model, payload, header.count, { progress });
    } else if (header.quality === 0) {
      const bins = bitsback.binning(header.maxError);
      pixels = new Uint8Array(header.count * size);
      await bitsback.decode(this.model, payload, header.count, {
        maxError: header.maxError, progress,
        onDecoded: (members, symbols, L) => {
          members.forEach((i, j) => {
            const lower = Int32Array.from(symbols[j], (s) => bins.starts[s]);
            const upper = Int32Array.from(symbols[j], (s) => bins.ends[s]);
            pixels.set(exact.reconstructFrom(L, j, lower, upper, header.maxError), i * size);
          });
        },
      });
    } else {
      pixels = await this.#decodeSingle(header, payload);
    }
    if (!indices) return pixels;
    const chosen = Array.from(indices, Number);
    const bad = chosen.find((i) => !(Number.isInteger(i) && i >= 0 && i < header.count));
    if (bad !== undefined) throw new InputError(`image index ${bad} is out of range: the container holds ${header.count} image(s)`);
    const out = new Uint8Array(chosen.length * size);
    chosen.forEach((i, j) => out.set(pixels.subarray(i * size, (i + 1) * size), j * size));
    return out;
  }

  async #decodeSingle(header, payload) {
    if (!this.tables || header.quality - 1 >= this.tables.qualities.length) {
      throw new ContainerError(`container is damaged (latent level ${header.quality - 1} unknown to this model)`);
    }
    const table = this.tables.qualities[header.quality - 1];
    const [length, pos] = container.decodeVarint(payload, 0, payload.length, "latent length");
    if (pos + length > payload.length) throw new ContainerError("container is damaged or truncated (latent longer than the payload)");
    const latents = decodePayloads(table, [payload.subarray(pos, pos + length)]);
    const out = await this.model.decodeIndices(latentIndices(latents));
    const L = likelihoodOf(this.model, out);
    const [lower, upper] = decodeKnown(L, payload.subarray(pos + length), header.maxError);
    return exact.reconstructFrom(L, 0, lower, upper, header.maxError);
  }
}


// -- near-lossless: one image under a known latent --------------------------------------------

/** Bins of maxError centred on each pixel's prediction (FORMAT.md §8 "single image"). */
export function pixelBins(prediction, maxError) {
  const width = 2 * maxError + 1;
  const P = prediction.length;
  const count = Math.ceil(LEVELS / width) + 1;
  const centre = new Int32Array(P);
  const firstBin = new Int32Array(P);
  const edges = new Int32Array(P * (count + 1));
  for (let p = 0; p < P; p++) {
    const c0 = Math.min(Math.max(prediction[p], 0), LEVELS - 1);
    const c = c0 <= maxError ? 0 : c0 >= LEVELS - 1 - maxError ? LEVELS - 1 : c0;
    centre[p] = c;
    firstBin[p] = Math.floor((maxError - c) / width);
    for (let j = 0; j <= count; j++) {
      edges[p * (count + 1) + j] = Math.min(Math.max((firstBin[p] + j) * width + c - maxError, 0), LEVELS);
    }
  }
  const isqrt = Math.floor(Math.sqrt(count - 1));
  return { maxError, width, centre, firstBin, edges, bins: count, group: isqrt + 1 };
}

/** One image's Likelihood (lossless binning: the components' full tables) from decoder outputs. */
function likelihoodOf(model, out) {
  const T = exact.tables(bitsback.LATENT_BUCKET_BITS);
  return new bitsback.Likelihood(T, out, 1, model.imageSize, model.components, bitsback.binning(0));
}

/** The whole mixture's table over runs between level edges: cumulative (n + 1) into `cum`. */
function mixtureTable(L, pixel, levels, n, cum) {
  const raw = new Float64Array(n + 1);
  for (let j = 0; j <= n; j++) raw[j] = L.mixtureCdf(pixel, levels[j]);
  exact.fromCumulative(raw, n, cum);
}

function twoStage(L, bins, p) {
  const n = bins.bins;
  const g = bins.group;
  const groups = Math.ceil(n / g);
  const row = bins.edges.subarray(p * (n + 1), (p + 1) * (n + 1));
  const bounds = Array.from({ length: groups + 1 }, (_, i) => row[Math.min(i * g, n)]);
  const stage1 = new Float64Array(groups + 1);
  mixtureTable(L, p, bounds, groups, stage1);
  const within = (group) => {
    const levels = Array.from({ length: g + 1 }, (_, j) => row[Math.min(group * g + j, n)]);
    const cum = new Float64Array(g + 1);
    mixtureTable(L, p, levels, g, cum);
    return cum;
  };
  return { stage1, groups, within };
}

/** One image's stream: the 16-bit check, then its bins under the mixture (two stages). */
export function encodeKnown(L, image, maxError) {
  const T = L.T;
  const bins = pixelBins(L.prediction, maxError);
  const P = L.P;
  const symbols = new Int32Array(P);
  const lower = new Uint8Array(P);
  for (let p = 0; p < P; p++) {
    symbols[p] = Math.floor((image[p] - bins.centre[p] + maxError) / bins.width) - bins.firstBin[p];
    lower[p] = bins.edges[p * (bins.bins + 1) + symbols[p]];
  }
  const coder = new AnsCoder();
  const stages = Array.from({ length: P }, (_, p) => twoStage(L, bins, p));
  for (let p = P - 1; p >= 0; p--) coder.pushCumulative(symbols[p] % bins.group, stages[p].within(Math.floor(symbols[p] / bins.group)));
  for (let p = P - 1; p >= 0; p--) coder.pushCumulative(Math.floor(symbols[p] / bins.group), stages[p].stage1);
  const check = container.crc32(lower, T.fingerprint) & 0xffff;
  return container.concat([Uint8Array.of(check & 0xff, check >> 8), bitsback.wordsToBytes(coder.getCompressed(), true)]);
}

/** [lower, upper] levels (Int32Array P each) of a stream made by encodeKnown under the same Likelihood. */
export function decodeKnown(L, stream, maxError) {
  const kind = "near-lossless";
  const T = L.T;
  if (stream.length < bitsback.KNOWN_CHECK_BYTES) throw new ContainerError(`${kind} payload is truncated (inside its check)`);
  const bins = pixelBins(L.prediction, maxError);
  const P = L.P;
  const coder = bitsback.stackOf(stream.subarray(bitsback.KNOWN_CHECK_BYTES), kind);
  const stages = Array.from({ length: P }, (_, p) => twoStage(L, bins, p));
  const group = Int32Array.from(stages, (s) => coder.popCumulative(s.stage1, 0, s.groups));
  const lower = new Int32Array(P);
  const upper = new Int32Array(P);
  for (let p = 0; p < P; p++) {
    const rest = coder.popCumulative(stages[p].within(group[p]), 0, bins.group);
    const s = Math.min(group[p] * bins.group + rest, bins.bins - 1);
    lower[p] = bins.edges[p * (bins.bins + 1) + s];
    upper[p] = bins.edges[p * (bins.bins + 1) + s + 1] - 1;
  }
  if (!coder.isEmpty()) throw new ContainerError(`${kind} payload is damaged (its data does not end with its image)`);
  const stored = stream[0] | (stream[1] << 8);
  if (lower.some((v) => v > LEVELS - 1) || (container.crc32(Uint8Array.from(lower), T.fingerprint) & 0xffff) !== stored) {
    throw new ContainerError(`${kind} payload does not decode to its check: the data is damaged, or it was compressed ` +
      "on a machine whose model arithmetic differs from this one's (see docs/FORMAT.md)");
  }
  return [lower, upper];
}
