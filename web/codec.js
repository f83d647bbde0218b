// Lossy codec (docs/FORMAT.md §3-§4): codec.json tables, quantization, the per-image payloads,
// and the Codec that compresses and decompresses .evz containers with a loaded model.

import * as container from "./container.js";
import { RangeDecoder, RangeEncoder, InvalidData, cumulative, interval, lookupIn, uniform } from "./rangecoder.js";
import { BundleError, ContainerError, InputError } from "./errors.js";

// Constants of runtime/container.py that the tables must agree with (FORMAT.md §4).
export const STEP_BITS = 16;
export const MIN_STEP_UNITS = 16;
export const LATENT_CLAMP = 16;
export const FREQUENCY_BITS = 16;
export const MAX_ALPHABET = 4096;
export const ESCAPE_BITS = 20;
export const TABLES_FORMAT = "edgevae-codec-tables";
export const TABLES_VERSION = 1;
export const TABLES_FILE = "codec.json";
/** Images per encoder/decoder call, as Python's codec: it never changes the bytes. */
export const DEFAULT_BATCH_SIZE = 128;

const ESCAPE = uniform(ESCAPE_BITS);

/** Signed -> unsigned: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ... */
export const zigzag = (v) => (v >= 0 ? 2 * v : -2 * v - 1);
/** Inverse of zigzag. */
export const unzigzag = (u) => (u % 2 === 0 ? u / 2 : -(u + 1) / 2);

/** Round to the nearest integer, ties to even (numpy's rint). */
export function rint(x) {
  const r = Math.round(x); // ties go up here
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Largest |symbol| of a dimension: LATENT_CLAMP in units of the step, rounded half up. */
export const maxSymbol = (step) => Math.floor((2 * (LATENT_CLAMP * 2 ** STEP_BITS) + step) / (2 * step));

/** The integer tables of one quality level. */
export class QualityTable {
  constructor(index, entry, dim, where) {
    const problem = (text) => new BundleError(`${where}: quality ${index} ('${entry?.name ?? ""}') is invalid: ${text}`);
    if (!entry || typeof entry !== "object" || typeof entry.name !== "string" || !entry.name) throw problem("needs a name");
    const ints = (a) => Array.isArray(a) && a.every(Number.isSafeInteger);
    const { steps, centers, frequencies } = entry;
    if (!ints(steps) || !ints(centers) || steps.length !== dim || centers.length !== dim) throw problem(`needs ${dim} steps and centers`);
    if (steps.some((s) => s < MIN_STEP_UNITS || s > LATENT_CLAMP * 2 ** STEP_BITS)) throw problem("step out of range");
    if (centers.some((c, d) => Math.abs(c) > maxSymbol(steps[d]))) throw problem("centre symbol out of range");
    if (!Array.isArray(frequencies) || frequencies.length !== dim || !frequencies.every(ints) ||
        new Set(frequencies.map((r) => r.length)).size !== 1 || frequencies[0].length < 2 || frequencies[0].length > MAX_ALPHABET) {
      throw problem(`frequencies must be ${dim} rows of 2..${MAX_ALPHABET} entries`);
    }
    if (frequencies.some((r) => r.some((f) => f < 1) || r.reduce((a, b) => a + b, 0) !== 2 ** FREQUENCY_BITS)) {
      throw problem(`every frequency must be >= 1 and each row must sum to 2**${FREQUENCY_BITS}`);
    }
    this.index = index;
    this.name = entry.name;
    this.description = String(entry.description ?? "");
    this.stepFactor = Number(entry.step_factor ?? 0);
    this.steps = steps;
    this.centers = centers;
    this.size = frequencies[0].length;
    this.escape = this.size - 1;
    this.limits = steps.map(maxSymbol);
    this.cums = frequencies.map((row) => cumulative(row, FREQUENCY_BITS));
    this.lookups = this.cums.map(lookupIn);
  }

  /** Zigzag values (Int32 per dimension) of one image's posterior means (D float32 values). */
  symbols(means) {
    return this.steps.map((stepUnits, d) => {
      const step = stepUnits / 2 ** STEP_BITS;
      const clipped = Math.min(Math.max(means[d], -LATENT_CLAMP), LATENT_CLAMP);
      const limit = this.limits[d];
      const k = Math.min(Math.max(rint(clipped / step), -limit), limit);
      return zigzag(k - this.centers[d]);
    });
  }

  /** One image's payload (FORMAT.md §3): D table indices, then the escaped values, shortest termination. */
  encode(u) {
    const encoder = new RangeEncoder();
    u.forEach((value, d) => encoder.encode(...interval(this.cums[d], Math.min(value, this.escape))));
    for (const value of u) if (value >= this.escape) encoder.encode(...ESCAPE.interval(value - this.escape));
    const payload = encoder.shortestPayload();
    // The same self-check as Python: the payload must decode to the message.
    const back = this.decode(payload);
    if (back.some((v, d) => v !== u[d])) throw new Error("range coder self-check failed: the payload does not decode");
    return payload;
  }

  /** Zigzag values of one payload; throws InvalidData for data that no message produces. */
  decode(payload) {
    const decoder = new RangeDecoder(payload);
    const u = this.lookups.map((lookup) => decoder.decode(lookup));
    for (let d = 0; d < u.length; d++) if (u[d] === this.escape) u[d] += decoder.decode(ESCAPE.lookup);
    return u;
  }

  /** Write the latents of zigzag values `u` into `out` at `offset` (float32); false if a symbol is out of range. */
  latents(u, out, offset) {
    for (let d = 0; d < u.length; d++) {
      const k = this.centers[d] + unzigzag(u[d]);
      if (Math.abs(k) > this.limits[d]) return false;
      out[offset + d] = (k * this.steps[d]) / 2 ** STEP_BITS; // exact, then stored as float32
    }
    return true;
  }
}

/** Validate codec.json text (or parsed object) for a model with `dim` latent dimensions. */
export function parseTables(text, dim, where = TABLES_FILE) {
  let obj;
  try {
    obj = typeof text === "string" ? JSON.parse(text) : JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(text));
  } catch (e) {
    throw new BundleError(`${where}: unreadable codec tables (${e.name})`);
  }
  if (!obj || typeof obj !== "object" || obj.format !== TABLES_FORMAT) throw new BundleError(`${where}: not edgevae codec tables`);
  if (obj.format_version !== TABLES_VERSION) {
    throw new BundleError(`${where}: codec tables version ${obj.format_version} is not supported (supports ${TABLES_VERSION}); upgrade edgevae or refit the tables`);
  }
  const expected = { latent_dim: dim, step_bits: STEP_BITS, frequency_bits: FREQUENCY_BITS, latent_clamp: LATENT_CLAMP, escape_bits: ESCAPE_BITS };
  for (const [key, value] of Object.entries(expected)) {
    if (obj[key] !== value) throw new BundleError(`${where}: ${key} is ${JSON.stringify(obj[key] ?? null)}, this edgevae needs ${value}`);
  }
  const entries = obj.qualities;
  if (!Array.isArray(entries) || entries.length < 1 || entries.length > container.MAX_QUALITY_INDEX + 1) {
    throw new BundleError(`${where}: needs 1..${container.MAX_QUALITY_INDEX + 1} quality levels`);
  }
  const qualities = entries.map((e, i) => new QualityTable(i, e, dim, where));
  if (new Set(qualities.map((q) => q.name)).size !== qualities.length) throw new BundleError(`${where}: quality names are not unique`);
  const defaultTable = qualities.find((q) => q.name === obj.default_quality);
  if (!defaultTable) throw new BundleError(`${where}: default_quality ${JSON.stringify(obj.default_quality ?? null)} is not one of the qualities`);
  return { qualities, default: defaultTable, fittedOn: obj.fitted_on ?? {} };
}

/** A quality table by name, index (number or digit string) or null/undefined (the default). */
export function lookupQuality(tables, quality) {
  if (quality === null || quality === undefined) return tables.default;
  const byName = tables.qualities.find((t) => t.name === quality);
  if (byName) return byName;
  const index = typeof quality === "number" ? quality : /^\d+$/.test(String(quality)) ? Number(quality) : NaN;
  if (Number.isInteger(index) && index < tables.qualities.length) return tables.qualities[index];
  const names = tables.qualities.map((t) => t.name).join(", ");
  const shown = Number.isInteger(index) ? String(index) : typeof quality === "string" ? `'${quality}'` : String(quality);
  throw new InputError(`unknown quality ${shown}; choose one of: ${names} (or 0..${tables.qualities.length - 1})`);
}

/** Latents (Float32Array, N x D) of payloads; ContainerError on damage. `labels` name images in errors. */
export function decodePayloads(table, payloads, labels) {
  const dim = table.steps.length;
  const us = payloads.map((payload, i) => {
    const label = labels ? labels[i] : i;
    if (payload.length && payload[payload.length - 1] === 0) {
      throw new ContainerError(`container is damaged (image ${label}: payload ends in a zero byte)`);
    }
    try {
      return table.decode(payload);
    } catch (e) {
      // Python reports the type of constriction's exception: AssertionError for invalid data.
      if (e instanceof InvalidData) throw new ContainerError(`container is damaged (image ${label}: AssertionError)`);
      throw e;
    }
  });
  const out = new Float32Array(payloads.length * dim);
  us.forEach((u, i) => {
    if (!table.latents(u, out, i * dim)) throw new ContainerError("container is damaged (a latent symbol is out of range)");
  });
  return out;
}

/**
 * The table-set rule of lossless and near-lossless containers (FORMAT.md §6): version 3 payloads
 * are made by integer bundles (exact tables), versions 1 and 2 by float bundles; the bundle that
 * made the file (its fingerprint matched) decides which, so a mismatch is damage. Python's message.
 */
export function checkTableSet(header, model) {
  if (header.mode === container.MODE_LOSSY) return;
  const exact = header.version === container.EXACT_VERSION;
  if (exact !== Boolean(model.integer)) {
    throw new ContainerError(`container is damaged (version ${header.version} ${header.modeName} payloads are made by ` +
      `${exact ? "an integer" : "a float"} bundle, ${model.bundle.name} is not one)`);
  }
}

/**
 * Compress and decompress images with a loaded model (model.js) and its bundle's codec tables.
 *
 *     const codec = await Codec.create(model);
 *     const bytes = await codec.compress(pixels, { quality: "balanced" }); // Uint8Array: one .evz
 *     const images = await codec.decompress(bytes);                          // Uint8Array N*C*H*W
 *     await codec.decompress(bytes, { indices: [3] });                       // image 3 alone
 *
 * Pixels are uint8 in C-H-W order, image after image (a Uint8Array of N*C*H*W values, or an
 * ort.Tensor of type uint8 and dims [N, C, H, W]).
 */
export class Codec {
  constructor(model, tables, { batchSize = DEFAULT_BATCH_SIZE } = {}) {
    if (!(batchSize >= 1)) throw new InputError(`batch size must be >= 1, got ${batchSize}`);
    this.model = model;
    this.tables = tables;
    this.batchSize = batchSize;
    this.fingerprint = model.bundle.fingerprint;
  }

  /** A Codec for a loaded model; BundleError if its bundle has no codec tables. */
  static async create(model, options) {
    return new Codec(model, await model.bundle.codecTables(), options);
  }

  /** Quality names, smallest files first. */
  get qualities() {
    return this.tables.qualities.map((q) => q.name);
  }

  get defaultQuality() {
    return this.tables.default.name;
  }

  async #means(pixels) {
    const { data, count } = this.model.checkImages(pixels);
    if (count === 0) throw new InputError("no images to compress");
    const size = this.model.imageSize;
    const dim = this.model.latentDim;
    const means = new Float32Array(count * dim);
    for (let start = 0; start < count; start += this.batchSize) {
      const n = Math.min(this.batchSize, count - start);
      const { mean } = await this.model.encode(data.subarray(start * size, (start + n) * size));
      means.set(mean, start * dim);
    }
    return { means, count };
  }

  async #payloads(pixels, quality) {
    const table = lookupQuality(this.tables, quality);
    const { means, count } = await this.#means(pixels);
    const dim = this.model.latentDim;
    const payloads = [];
    for (let i = 0; i < count; i++) payloads.push(table.encode(table.symbols(means.subarray(i * dim, (i + 1) * dim))));
    return { table, payloads };
  }

  /** One container (Uint8Array) holding every image; `quality` is a name or an index (default: the bundle's). */
  async compress(pixels, { quality } = {}) {
    const { table, payloads } = await this.#payloads(pixels, quality);
    return container.pack(container.MODE_LOSSY, table.index, this.fingerprint, this.model.imageShape, payloads);
  }

  /** One single-image container per image (as `edgevae compress --split`). */
  async compressEach(pixels, { quality } = {}) {
    const { table, payloads } = await this.#payloads(pixels, quality);
    return payloads.map((p) => container.pack(container.MODE_LOSSY, table.index, this.fingerprint, this.model.imageShape, [p]));
  }

  /** Parse and verify a container of this model: [parsed container, quality table]. */
  open(bytes) {
    const parsed = container.openFor(bytes, this.fingerprint, this.model.imageShape);
    const { header } = parsed;
    checkTableSet(header, this.model);
    if (header.mode === container.MODE_NEAR_LOSSLESS) {
      throw new ContainerError("near-lossless containers (mode 2) are decoded by Python edgevae only: their probability " +
        "tables depend on float results that differ between ONNX engines (see docs/FORMAT.md §8)");
    }
    if (header.mode === container.MODE_LOSSLESS) {
      throw new ContainerError("lossless containers (mode 1) are decoded by Python edgevae only: their probability tables " +
        "depend on float results that differ between ONNX engines (see docs/FORMAT.md §7)");
    }
    if (header.quality >= this.tables.qualities.length) {
      throw new ContainerError(`container is damaged (quality index ${header.quality} unknown to this model)`);
    }
    return [parsed, this.tables.qualities[header.quality]];
  }

  /**
   * Decode a container to uint8 pixels (Uint8Array, N*C*H*W); `indices` selects images in any
   * order (only their payloads are decoded). ContainerError / InputError as Python's.
   */
  async decompress(bytes, { indices } = {}) {
    const [parsed, table] = this.open(bytes);
    const count = parsed.header.count;
    const chosen = indices ? Array.from(indices, Number) : Array.from({ length: count }, (_, i) => i);
    const bad = chosen.find((i) => !(Number.isInteger(i) && i >= 0 && i < count));
    if (bad !== undefined) throw new InputError(`image index ${bad} is out of range: the container holds ${count} image(s)`);
    const latents = decodePayloads(table, chosen.map((i) => parsed.payload(i)), chosen);
    const dim = this.model.latentDim;
    const size = this.model.imageSize;
    const out = new Uint8Array(chosen.length * size);
    for (let start = 0; start < chosen.length; start += this.batchSize) {
      const n = Math.min(this.batchSize, chosen.length - start);
      out.set(await this.model.decode(latents.subarray(start * dim, (start + n) * dim)), start * size);
    }
    return out;
  }

  /** What a container says about itself, checked against this model (without decoding). */
  describe(bytes) {
    return container.describe(bytes, this.fingerprint, this.model.imageShape, (header) =>
      header.mode === container.MODE_LOSSY ? this.tables.qualities[header.quality]?.name ?? null : null);
  }
}
