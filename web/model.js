// The model: two ONNX Runtime sessions (onnxruntime-node in Node, onnxruntime-web in browsers)
// behind a small API mirroring Python's EdgeVAE: encode, decode, sample, reconstruct, interpolate.

import { BundleError, InputError } from "./errors.js";
import { ARITHMETIC_INTEGER, INTEGER_CONTEXT_GRAPH, graphsFor, pixelTile, readBundle } from "./bundle.js";

const isNode = typeof process !== "undefined" && !!process.versions?.node;

/** onnxruntime for this platform: onnxruntime-node in Node, onnxruntime-web elsewhere (an import map may point it at node_modules). */
export async function defaultOrt() {
  return isNode ? import("onnxruntime-node") : import("onnxruntime-web");
}

/**
 * Seeded standard normal numbers (float32): xoshiro128** seeded through splitmix32, Box-Muller.
 * The same seed gives the same numbers in every browser and Node; they are not numpy's.
 */
export function gaussian(count, seed = 0) {
  let s = seed >>> 0;
  const splitmix = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  const st = [splitmix(), splitmix(), splitmix(), splitmix()];
  const next = () => {
    const result = Math.imul(((Math.imul(st[1], 5) << 7) | (Math.imul(st[1], 5) >>> 25)) >>> 0, 9) >>> 0;
    const t = (st[1] << 9) >>> 0;
    st[2] ^= st[0]; st[3] ^= st[1]; st[1] ^= st[2]; st[0] ^= st[3];
    st[2] ^= t;
    st[3] = ((st[3] << 11) | (st[3] >>> 21)) >>> 0;
    return result;
  };
  const uniform = () => (next() + 0.5) / 2 ** 32; // in (0, 1)
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniform()));
    const a = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(a);
    if (i + 1 < count) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

/** A loaded bundle: encode, decode, sample, reconstruct and interpolate images. */
export class EdgeVAE {
  constructor(bundle, ort, encoder, decoder, context = null) {
    this.bundle = bundle;
    this.ort = ort;
    this.imageShape = bundle.imageShape;
    this.imageSize = this.imageShape.reduce((a, b) => a * b, 1);
    this.latentDim = bundle.latentDim;
    this.components = bundle.components;
    /** True for an integer bundle: its graphs return the coders' grid indices (runtime/contract.py). */
    this.integer = bundle.arithmetic === ARITHMETIC_INTEGER;
    this.encoder = encoder;
    this.decoder = decoder;
    /** Pixel groups of a context bundle (model.json "pixel_groups", 1 without) and their tile. */
    this.pixelGroups = Number(bundle.manifest.pixel_groups ?? 1);
    this.pixelTile = pixelTile(this.pixelGroups, bundle.manifest.pixel_tile);
    /** An integer context bundle's context.onnx session (null otherwise: a float context bundle's
     * graph is verified and fingerprinted but never run here, its lossless files are Python's). */
    this.context = context;
  }

  /** Pixels as {data: Uint8Array N*C*H*W, count}; InputError unless uint8 images of the model's shape. */
  checkImages(pixels) {
    let data = pixels;
    if (pixels && typeof pixels === "object" && "dims" in pixels && "data" in pixels) { // an ort.Tensor
      const dims = Array.from(pixels.dims);
      const batched = dims.length === 3 ? [1, ...dims] : dims;
      if (batched.length !== 4 || batched.slice(1).some((n, i) => n !== this.imageShape[i])) {
        throw new InputError(`images must have shape (N, ${this.imageShape.join(", ")}), got (${dims.join(", ")})`);
      }
      data = pixels.data;
    }
    if (!(data instanceof Uint8Array || data instanceof Uint8ClampedArray)) {
      throw new InputError("images must be uint8 pixels 0..255 (a Uint8Array in C-H-W order, image after image)");
    }
    if (data.length % this.imageSize !== 0) {
      throw new InputError(`images must be a multiple of ${this.imageSize} pixels (${this.imageShape.join(" x ")} each), got ${data.length}`);
    }
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), count: data.length / this.imageSize };
  }

  /** Posterior means and log-variances (Float32Array N*D each) of uint8 images. An integer
   * bundle's are its grid values: mean_index / 2**10 and -24 + logvar_index / 64. */
  async encode(pixels) {
    if (this.integer) {
      const { meanIndex, logvarIndex } = await this.encodeIndices(pixels);
      return { mean: Float32Array.from(meanIndex, (i) => i / 1024), logvar: Float32Array.from(logvarIndex, (i) => -24 + i / 64) };
    }
    const { data, count } = this.checkImages(pixels);
    if (count === 0) return { mean: new Float32Array(0), logvar: new Float32Array(0) };
    const images = new this.ort.Tensor("uint8", data, [count, ...this.imageShape]);
    const out = await this.encoder.run({ images });
    return { mean: Float32Array.from(out.mean.data), logvar: Float32Array.from(out.logvar.data) };
  }

  /** An integer bundle's encoder outputs: {meanIndex, logvarIndex}, Int32Array N*D each, clamped to
   * the contract's ranges (as Python's encode_indices). */
  async encodeIndices(pixels) {
    if (!this.integer) throw new InputError(`${this.bundle.name} is not an integer bundle`);
    const { data, count } = this.checkImages(pixels);
    const dim = this.latentDim;
    if (count === 0) return { meanIndex: new Int32Array(0), logvarIndex: new Int32Array(0) };
    const images = new this.ort.Tensor("uint8", data, [count, ...this.imageShape]);
    const out = await this.encoder.run({ images });
    return { meanIndex: clamped(out.mean_index.data, -8192, 8192), logvarIndex: clamped(out.logvar_index.data, 0, 2048), count, dim };
  }

  /** An integer bundle's decoder outputs for latent indices (N*D int32, z = i / 2**8):
   * {pixels Uint8Array N*C*H*W, logit, mean, logScale: Int32Array N*K*C*H*W grid indices}. */
  async decodeIndices(latentIndex) {
    if (!this.integer) throw new InputError(`${this.bundle.name} is not an integer bundle`);
    const z = clamped(latentIndex, -2048, 2048);
    if (z.length % this.latentDim !== 0) throw new InputError(`latents must be N x ${this.latentDim} values, got ${z.length}`);
    const tensor = new this.ort.Tensor("int32", z, [z.length / this.latentDim, this.latentDim]);
    const out = await this.decoder.run({ latents: tensor });
    return {
      pixels: Uint8Array.from(out.pixels.data), logit: clamped(out.mixture_logit_index.data, -512, 512),
      mean: clamped(out.mixture_mean_index.data, 0, 8160), logScale: clamped(out.mixture_log_scale_index.data, 0, 128),
    };
  }

  /**
   * An integer context bundle's context graph (runtime/contract.py INTEGER_CONTEXT): the decoder's
   * grid indices `mixture` ({logit, mean, logScale}: Int32Array N*K*C*H*W, as decodeIndices gives)
   * refined by the pixels known so far, as indices on the same grids, clamped to the contract's
   * ranges (as Python's context_likelihood_indices). `pixels`: Uint8Array N*C*H*W; `known`:
   * Uint8Array N*C*H*W or C*H*W (one mask for every image), nonzero where `pixels` holds a known
   * pixel (the others are fed as 0, so they never matter).
   */
  async contextIndices(mixture, pixels, known) {
    if (!this.context) {
      throw new InputError(`${this.bundle.name} has no integer context graph (${INTEGER_CONTEXT_GRAPH.file})`);
    }
    const size = this.imageSize;
    const count = pixels.length / size;
    const mixtureSize = this.components * size;
    if (!Number.isInteger(count) || [mixture.logit, mixture.mean, mixture.logScale].some((a) => a.length !== count * mixtureSize)) {
      throw new InputError(`context inputs must be N x ${mixtureSize} indices and N x ${size} pixels`);
    }
    if (known.length !== size && known.length !== pixels.length) {
      throw new InputError(`known must be ${size} or N x ${size} values, got ${known.length}`);
    }
    const empty = { logit: new Int32Array(0), mean: new Int32Array(0), logScale: new Int32Array(0) };
    if (count === 0) return empty;
    const mask = new Uint8Array(count * size);
    const fed = new Uint8Array(count * size);
    for (let i = 0; i < mask.length; i++) {
      if (known[known.length === size ? i % size : i] !== 0) {
        mask[i] = 1;
        fed[i] = pixels[i];
      }
    }
    const shape = [count, this.components, ...this.imageShape];
    const image = [count, ...this.imageShape];
    const int32 = (a) => new this.ort.Tensor("int32", a instanceof Int32Array ? a : Int32Array.from(a), shape);
    const out = await this.context.run({
      mixture_logit_index: int32(mixture.logit),
      mixture_mean_index: int32(mixture.mean),
      mixture_log_scale_index: int32(mixture.logScale),
      pixels: new this.ort.Tensor("uint8", fed, image),
      known: new this.ort.Tensor("uint8", mask, image),
    });
    return {
      logit: clamped(out.context_logit_index.data, -512, 512), mean: clamped(out.context_mean_index.data, 0, 8160),
      logScale: clamped(out.context_log_scale_index.data, 0, 128),
    };
  }

  /** Mean pixels (Uint8Array N*C*H*W) of latents (N*D float32 values, finite). */
  async decode(latents) {
    const z = Float32Array.from(latents);
    if (z.length % this.latentDim !== 0) throw new InputError(`latents must be N x ${this.latentDim} values, got ${z.length}`);
    if (!z.every(Number.isFinite)) throw new InputError("latents contain NaN or Inf");
    if (z.length === 0) return new Uint8Array(0);
    if (this.integer) return (await this.decodeIndices(latentIndices(z))).pixels;
    const tensor = new this.ort.Tensor("float32", z, [z.length / this.latentDim, this.latentDim]);
    const out = await this.decoder.run({ latents: tensor }, ["pixels"]);
    return Uint8Array.from(out.pixels.data);
  }

  /** What `sample` draws from by default: "learned" (the bundle has prior.onnx) or "normal". */
  get prior() {
    return this.bundle.priorKind ? "learned" : "normal";
  }

  /**
   * `n` latents (Float32Array n*D): u = temperature * eps, eps ~ N(0, I) from `seed` (our own
   * generator), then z = u (prior "normal") or z = prior.onnx(u) ("learned", the default when
   * the bundle has a learned prior), as Python's EdgeVAE.sample_latents.
   */
  async sampleLatents(n, { temperature = 1, seed = 0, prior = this.prior } = {}) {
    if (!(Number.isInteger(n) && n >= 0)) throw new InputError(`number of samples must be >= 0, got ${n}`);
    if (!(Number.isFinite(temperature) && temperature >= 0)) throw new InputError(`temperature must be a finite number >= 0, got ${temperature}`);
    if (prior !== "learned" && prior !== "normal") throw new InputError(`prior must be one of learned, normal, got ${prior}`);
    if (prior === "normal") return gaussian(n * this.latentDim, seed).map((e) => Math.fround(e * Math.fround(temperature)));
    if (!this.bundle.priorKind) throw new InputError(`${this.bundle.name} has no learned prior (prior.onnx); sample with prior "normal"`);
    const noiseDim = Number(this.bundle.manifest.prior.noise_dim);
    const u = gaussian(n * noiseDim, seed).map((e) => Math.fround(e * Math.fround(temperature)));
    if (n === 0) return new Float32Array(0);
    this.priorSession ??= await session(this.ort, await this.bundle.optionalGraph("prior"), "prior", undefined);
    const out = await this.priorSession.run({ noise: new this.ort.Tensor("float32", u, [n, noiseDim]) });
    if (!out.latents || out.latents.data.length !== n * this.latentDim) {
      throw new BundleError(`prior.onnx: gave latents of shape ${JSON.stringify(out.latents?.dims)}, expected [${n}, ${this.latentDim}]`);
    }
    return Float32Array.from(out.latents.data);
  }

  /** `n` new images decoded from `sampleLatents` (same options): the learned prior when the bundle has one. */
  async sample(n, options = {}) {
    return this.decode(await this.sampleLatents(n, options));
  }

  /** Encode to the posterior mean and decode again. */
  async reconstruct(pixels) {
    return this.decode((await this.encode(pixels)).mean);
  }

  /** Latents blending image a into image b: `steps` points on the straight line between their means, as Python's. */
  async interpolationLatents(a, b, steps = 8) {
    if (!(Number.isInteger(steps) && steps >= 2)) throw new InputError(`interpolation needs at least 2 steps, got ${steps}`);
    const pair = new Uint8Array(2 * this.imageSize);
    pair.set(this.checkImages(a).data);
    pair.set(this.checkImages(b).data, this.imageSize);
    const { mean } = await this.encode(pair);
    const d = this.latentDim;
    const z = new Float32Array(steps * d);
    for (let s = 0; s < steps; s++) {
      const t = Math.fround(s / (steps - 1));
      const u = Math.fround(1 - t);
      for (let j = 0; j < d; j++) z[s * d + j] = Math.fround(Math.fround(u * mean[j]) + Math.fround(t * mean[d + j]));
    }
    return z;
  }

  /** `steps` images blending image `a` into image `b` (one image each) through latent space. */
  async interpolate(a, b, steps = 8) {
    return this.decode(await this.interpolationLatents(a, b, steps));
  }
}

/** Int32Array of integer values clamped to [lo, hi] (the integer contract's ranges, runtime/contract.py). */
function clamped(values, lo, hi) {
  const out = new Int32Array(values.length);
  for (let i = 0; i < out.length; i++) {
    const v = values[i];
    out[i] = v < lo ? lo : v > hi ? hi : v;
  }
  return out;
}

/** An integer decoder's input for latents z (float): floor(z * 2**8 + 0.5) clamped to +-2048, in
 * binary64 (the lossy rule of the integer contract; z = k * step is exact, so k * step * 256 is too). */
export function latentIndices(z) {
  return Int32Array.from(z, (v) => Math.min(Math.max(Math.floor(v * 256 + 0.5), -2048), 2048));
}

async function session(ort, bytes, key, threads) {
  const options = { graphOptimizationLevel: "all", logSeverityLevel: 3 };
  if (threads) options.intraOpNumThreads = threads;
  try {
    return await ort.InferenceSession.create(bytes, options);
  } catch (e) {
    throw new BundleError(`${key}.onnx: ONNX Runtime cannot load this graph (${String(e.message).split("\n")[0]})`);
  }
}

/**
 * Load a bundle (folder path, URL, or a shipped bundle's name in Node) and create its sessions.
 * Options: `ort` (an onnxruntime module; default onnxruntime-node / onnxruntime-web), `threads`.
 */
export async function load(location, { ort, threads } = {}) {
  const bundle = await readBundle(location);
  ort ??= await defaultOrt();
  const graphs = [...graphsFor(bundle.arithmetic)];
  // An integer context bundle codes its lossless files with context.onnx: loaded like the others.
  // (A float context bundle's is verified by readBundle, but its lossless files are Python's only.)
  if (bundle.arithmetic === ARITHMETIC_INTEGER && Number(bundle.manifest.pixel_groups ?? 1) > 1) graphs.push(INTEGER_CONTEXT_GRAPH);
  const sessions = [];
  for (const graph of graphs) {
    const s = await session(ort, bundle.files[graph.key], graph.key, threads);
    const names = [Array.from(s.inputNames), Array.from(s.outputNames)];
    if (JSON.stringify(names) !== JSON.stringify([graph.inputs, graph.outputs])) {
      throw new BundleError(`${graph.key}.onnx: inputs/outputs ${JSON.stringify(names)} do not follow the edgevae contract`);
    }
    sessions.push(s);
  }
  return new EdgeVAE(bundle, ort, ...sessions);
}
