// Finding, reading and verifying model bundles (model.json + the files it names) from a folder
// (Node) or a URL (browsers and Node): every file is checked against its sha256 before use,
// and the bundle's 32-byte fingerprint is computed as docs/FORMAT.md §2 specifies.

import { BundleError } from "./errors.js";
import { parseTables, TABLES_FILE } from "./codec.js";

export const MANIFEST_FILE = "model.json";
export const MANIFEST_FORMAT = "edgevae-bundle";
export const MANIFEST_VERSION = 1;
export const LIKELIHOOD_KIND = "discretized_logistic_mixture";
// The graphs of the contract (runtime/contract.py GraphSpec): each tensor as [name, dtype, shape],
// its shape's symbols resolved per bundle (dims) as Python's TensorSpec.resolve; `inputs` and
// `outputs` are the names in order (what a loaded session must show).
const IMAGE = ["batch", "channels", "height", "width"];
const MIXTURE = ["batch", "components", "channels", "height", "width"];
const LATENT = ["batch", "latent"];
const graphSpec = (key, inputs, outputs) => ({
  key, file: `${key}.onnx`, tensors: { inputs, outputs },
  inputs: inputs.map(([name]) => name), outputs: outputs.map(([name]) => name),
});
/** The graphs in contract order (the fingerprint hashes their digests in this order). */
export const GRAPHS = [
  graphSpec("encoder", [["images", "uint8", IMAGE]], [["mean", "float32", LATENT], ["logvar", "float32", LATENT]]),
  graphSpec("decoder", [["latents", "float32", LATENT]], [["pixels", "uint8", IMAGE], ["mixture_logits", "float32", MIXTURE],
    ["mixture_means", "float32", MIXTURE], ["mixture_log_scales", "float32", MIXTURE]]),
];
/** How a bundle's graphs compute (model.json "arithmetic", absent = "float"; runtime/contract.py). */
export const ARITHMETIC_FLOAT = "float";
export const ARITHMETIC_INTEGER = "integer";
export const ARITHMETICS = [ARITHMETIC_FLOAT, ARITHMETIC_INTEGER];
/** The graphs of an integer bundle (runtime/contract.py INTEGER_ENCODER / INTEGER_DECODER): int32
 * grid indices out of the encoder, int32 latent indices into the decoder, int32 grid indices out. */
export const INTEGER_GRAPHS = [
  graphSpec("encoder", [["images", "uint8", IMAGE]], [["mean_index", "int32", LATENT], ["logvar_index", "int32", LATENT]]),
  graphSpec("decoder", [["latents", "int32", LATENT]], [["pixels", "uint8", IMAGE], ["mixture_logit_index", "int32", MIXTURE],
    ["mixture_mean_index", "int32", MIXTURE], ["mixture_log_scale_index", "int32", MIXTURE]]),
];
/** The context graph of a float bundle with pixel groups (runtime/contract.py CONTEXT): the
 * decoder's mixture refined by the pixels known so far. Its lossless files are float files, which
 * this package refuses by name (README "JavaScript and the browser"); it is checked and fingerprinted. */
export const CONTEXT_GRAPH = graphSpec("context",
  [["mixture_logits", "float32", MIXTURE], ["mixture_means", "float32", MIXTURE], ["mixture_log_scales", "float32", MIXTURE],
    ["pixels", "uint8", IMAGE], ["known", "uint8", IMAGE]],
  [["context_logits", "float32", MIXTURE], ["context_means", "float32", MIXTURE], ["context_log_scales", "float32", MIXTURE]]);
/** The context graph of an integer bundle with pixel groups (runtime/contract.py INTEGER_CONTEXT):
 * the decoder's int32 grid indices and the known pixels in, int32 indices on the same grids out
 * (a reader clamps them to the contract's ranges). Its lossless files are version-3 files. */
export const INTEGER_CONTEXT_GRAPH = graphSpec("context",
  [["mixture_logit_index", "int32", MIXTURE], ["mixture_mean_index", "int32", MIXTURE],
    ["mixture_log_scale_index", "int32", MIXTURE], ["pixels", "uint8", IMAGE], ["known", "uint8", IMAGE]],
  [["context_logit_index", "int32", MIXTURE], ["context_mean_index", "int32", MIXTURE],
    ["context_log_scale_index", "int32", MIXTURE]]);
/** The default tile of each model.json "pixel_groups" without a "pixel_tile", and the most rows
 * and columns a tile has (runtime/contract.py PIXEL_GROUP_TILES, MAX_PIXEL_TILE). */
export const PIXEL_GROUP_TILES = { 1: [[0]], 2: [[0, 1], [1, 0]], 4: [[0, 2], [3, 1]] };
export const MAX_PIXEL_TILE = 8;
const MAX_PIXEL_GROUPS = MAX_PIXEL_TILE ** 2;

/** A tile as text, rows split by "/", group numbers by "," (runtime/contract.py tile_text). */
export const tileText = (tile) => tile.map((row) => row.join(",")).join("/");

/** A bundle's tile of pixel groups (runtime/contract.py pixel_tile, same messages): `tile` checked,
 * or the default of `groups`. */
export function pixelTile(groups, tile) {
  const fail = (what) => { throw new BundleError(what); };
  if (!(groups >= 1 && groups <= MAX_PIXEL_GROUPS)) fail(`pixel_groups ${groups} is not an integer in 1..${MAX_PIXEL_GROUPS}`);
  const defaults = Object.keys(PIXEL_GROUP_TILES);
  if (tile === undefined) {
    if (!defaults.includes(String(groups))) {
      fail(`pixel_groups ${groups} needs a pixel_tile (there are defaults for ${defaults.join(", ")})`);
    }
    return PIXEL_GROUP_TILES[groups];
  }
  const fits = (n) => n >= 1 && n <= MAX_PIXEL_TILE;
  if (!(fits(tile.length) && fits(tile[0].length) && tile.every((row) => row.length === tile[0].length))) {
    fail(`pixel_tile must be 1..${MAX_PIXEL_TILE} rows of 1..${MAX_PIXEL_TILE} group numbers, all rows as long`);
  }
  const used = [...new Set(tile.flat())].sort((a, b) => a - b);
  if (used.length !== groups || used.some((g, i) => g !== i)) {
    fail(`pixel_tile must hold every group 0..${groups - 1} and no other number`);
  }
  return tile;
}

/** The graphs a manifest's codecs compute with, in fingerprint order (runtime/contract.py coding_graphs). */
export function codingGraphs(manifest) {
  const arithmetic = manifest.arithmetic ?? ARITHMETIC_FLOAT;
  const graphs = graphsFor(arithmetic);
  return (manifest.pixel_groups ?? 1) > 1 ? [...graphs, contextGraphFor(arithmetic)] : graphs;
}

/** The context graph of a manifest's arithmetic (runtime/contract.py context_graph_for). */
export function contextGraphFor(arithmetic = ARITHMETIC_FLOAT) {
  graphsFor(arithmetic); // the same check and message
  return arithmetic === ARITHMETIC_INTEGER ? INTEGER_CONTEXT_GRAPH : CONTEXT_GRAPH;
}

/** A graph's inputs and outputs as model.json describes them for a bundle's `dims` (channels,
 * height, width, latent, components): {inputs, outputs} of {name, dtype, shape} ("batch" stays). */
export function describeGraph(graph, dims) {
  const describe = ([name, dtype, shape]) => ({ name, dtype, shape: shape.map((d) => (d === "batch" ? d : dims[d])) });
  return { inputs: graph.tensors.inputs.map(describe), outputs: graph.tensors.outputs.map(describe) };
}

/** The (encoder, decoder) contract of a manifest's arithmetic; BundleError for an unknown one. */
export function graphsFor(arithmetic = ARITHMETIC_FLOAT) {
  if (arithmetic === ARITHMETIC_INTEGER) return INTEGER_GRAPHS;
  if (arithmetic === ARITHMETIC_FLOAT) return GRAPHS;
  throw new BundleError(`arithmetic must be one of ${ARITHMETIC_FLOAT}, ${ARITHMETIC_INTEGER}, got '${arithmetic}'`);
}

const isNode = typeof process !== "undefined" && !!process.versions?.node;

/** The folder of the bundles shipped with edgevae (`exported/` next to `web/`), as a URL. */
export const SHIPPED_BUNDLES = new URL("../exported/", import.meta.url);

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(text) {
  return Uint8Array.from(text.match(/../g), (h) => parseInt(h, 16));
}

/** sha256 of bytes (WebCrypto: browsers in secure contexts such as localhost, and Node). */
export async function sha256(bytes) {
  // Node 18 has WebCrypto only as node:crypto's webcrypto; browsers and Node 20+ as a global.
  const subtle = globalThis.crypto?.subtle ?? (await import("node:crypto")).webcrypto.subtle;
  return new Uint8Array(await subtle.digest("SHA-256", bytes));
}

/** Reads a bundle's files from a folder path (Node) or a base URL (fetch). */
class Source {
  constructor(location) {
    if (location instanceof URL || !isNode || /^[a-z][a-z0-9+.-]*:\/\//i.test(String(location))) {
      const base = new URL(String(location), globalThis.document?.baseURI ?? SHIPPED_BUNDLES);
      if (!base.pathname.endsWith("/")) base.pathname += "/";
      this.url = base;
      this.label = base.protocol === "file:" ? decodeURIComponent(base.pathname).replace(/\/$/, "") : base.href.replace(/\/$/, "");
    } else {
      this.folder = String(location).replace(/\/+$/, "") || "/";
      this.label = String(location);
    }
  }

  where(name) {
    return `${this.label}/${name}`;
  }

  /** Bytes of file `name`, or null if it does not exist. */
  async read(name) {
    if (this.url && this.url.protocol !== "file:") {
      let response;
      try {
        response = await fetch(new URL(name, this.url));
      } catch (e) {
        throw new BundleError(`${this.where(name)}: cannot fetch (${e.message})`);
      }
      if (response.status === 404) return null;
      if (!response.ok) throw new BundleError(`${this.where(name)}: cannot fetch (HTTP ${response.status})`);
      return new Uint8Array(await response.arrayBuffer());
    }
    const { readFile } = await import("node:fs/promises");
    const path = this.url ? new URL(name, this.url) : `${this.folder}/${name}`;
    try {
      return new Uint8Array(await readFile(path));
    } catch (e) {
      if (e.code === "ENOENT") return null;
      throw new BundleError(`${this.where(name)}: cannot read (${e.code ?? e.message})`);
    }
  }

  /** BundleError unless the location is an existing folder (Node paths only). */
  async checkFolder() {
    if (this.url && this.url.protocol !== "file:") return;
    const { stat } = await import("node:fs/promises");
    const folder = this.url ?? this.folder;
    const isDir = await stat(folder).then((s) => s.isDirectory(), () => false);
    if (!isDir) {
      const names = (await shippedBundleNames()).join(", ");
      throw new BundleError(`${this.label}: no such model bundle folder (shipped bundles by name: ${names})`);
    }
  }
}

/** Names of the shipped bundles (Node; in a browser an empty list). */
export async function shippedBundleNames() {
  if (!isNode) return [];
  const { readdir, stat } = await import("node:fs/promises");
  const names = await readdir(SHIPPED_BUNDLES).catch(() => []);
  const found = [];
  for (const name of names.sort()) {
    if (await stat(new URL(`${name}/${MANIFEST_FILE}`, SHIPPED_BUNDLES)).then(() => true, () => false)) found.push(name);
  }
  return found;
}

/** A bundle location: a folder path or URL; a bare name of a shipped bundle means that bundle (Node). */
async function resolveLocation(location) {
  if (isNode && !(location instanceof URL) && /^[A-Za-z0-9._-]+$/.test(String(location))) {
    const { stat } = await import("node:fs/promises");
    const local = await stat(String(location)).then(() => true, () => false);
    if (!local && (await shippedBundleNames()).includes(String(location))) return new URL(`${location}/`, SHIPPED_BUNDLES);
  }
  return location;
}

// The manifest's schema: the table of runtime/manifest.py (FIELDS), field for field, with the same
// messages; tests/fixtures/bad-manifests.json holds manifests both must refuse identically.
const OBJECT = "an object", STRING = "a string", INTEGER = "an integer", NUMBER = "a finite number", LIST = "a list",
  INTEGERS = "a list of integers", STRINGS = "a list of strings", SHA256 = "64 lowercase hex digits", FILE = "a file name",
  INTEGER_ROWS = "a list of lists of integers";
const isInt = (v) => Number.isInteger(v);
const CHECKS = {
  [OBJECT]: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
  [STRING]: (v) => typeof v === "string",
  [INTEGER]: isInt,
  [NUMBER]: (v) => typeof v === "number" && Number.isFinite(v),
  [LIST]: (v) => Array.isArray(v),
  [INTEGERS]: (v) => Array.isArray(v) && v.every(isInt),
  [STRINGS]: (v) => Array.isArray(v) && v.every((x) => typeof x === "string"),
  [SHA256]: (v) => typeof v === "string" && /^[0-9a-f]{64}$/.test(v),
  [FILE]: (v) => typeof v === "string",
  [INTEGER_ROWS]: (v) => Array.isArray(v) && v.every((row) => Array.isArray(row) && row.every(isInt)),
};
/** [path, kind, flags]: "r" required, "n" nullable, "?PATH" required when PATH is present. */
const graphFields = (key, required) => [[`graphs.${key}`, OBJECT, required ? "r" : ""], [`graphs.${key}.file`, FILE, "r"],
  [`graphs.${key}.sha256`, SHA256, "r"], [`graphs.${key}.inputs`, LIST, ""], [`graphs.${key}.outputs`, LIST, ""]];
export const FIELDS = [
  ["format", STRING, "r"], ["format_version", INTEGER, "r"], ["name", STRING, ""], ["precision", STRING, ""],
  ["opset", INTEGER, ""],
  ["arithmetic", STRING, ""],
  ["pixel_groups", INTEGER, ""],
  ["pixel_tile", INTEGER_ROWS, ""],
  ["image", OBJECT, "r"], ["image.shape", INTEGERS, "r"], ["image.layout", STRING, ""], ["image.dtype", STRING, ""],
  ["image.pixel_range", INTEGERS, ""],
  ["latent", OBJECT, "r"], ["latent.dim", INTEGER, "r"], ["latent.prior", STRING, ""],
  ["likelihood", OBJECT, "r"], ["likelihood.kind", STRING, "r"], ["likelihood.components", INTEGER, "r"],
  ["likelihood.domain", STRING, ""],
  ["graphs", OBJECT, "r"], ...graphFields("encoder", true), ...graphFields("decoder", true), ...graphFields("prior", false),
  ...graphFields("context", false),
  ["codec", OBJECT, ""], ["codec.file", FILE, "r"], ["codec.sha256", SHA256, "r"], ["codec.qualities", STRINGS, ""],
  ["codec.default_quality", STRING, ""],
  ["prior", OBJECT, "?graphs.prior"], ["prior.kind", STRING, "r"], ["prior.noise_dim", INTEGER, "r"],
  ["prior.description", STRING, ""], ["prior.command", STRING, ""], ["prior.config", OBJECT, ""],
  ["prior.fitted_on", OBJECT, ""], ["prior.metrics", OBJECT, ""], ["prior.parity", OBJECT, ""], ["prior.versions", OBJECT, ""],
  ["novelty", OBJECT, ""], ["novelty.threshold", NUMBER, "r"], ["novelty.percentile", NUMBER, ""],
  ["novelty.complexity", STRING, ""], ["novelty.samples", INTEGER, ""], ["novelty.images", INTEGER, ""],
  ["novelty.novelty_median", NUMBER, ""], ["novelty.fitted_on", OBJECT, ""],
  ["training", OBJECT, ""], ["training.command", STRING, ""], ["training.model_config", OBJECT, ""],
  ["training.train_config", OBJECT, ""], ["training.train_config.dataset", STRING, ""],
  ["training.train_config.seed", INTEGER, ""], ["training.data", STRING, ""], ["training.epochs_trained", INTEGER, ""],
  ["training.source_bundle", STRING, ""],
  ["evaluation", OBJECT, "n"], ["evaluation.nelbo_bpd", NUMBER, "r"], ["evaluation.iwae_bpd", NUMBER, "r"],
  ["evaluation.psnr_db", NUMBER, "r"], ["evaluation.k", INTEGER, "r"], ["evaluation.images", INTEGER, "r"],
  ["evaluation.seed", INTEGER, ""], ["evaluation.seconds", NUMBER, ""], ["evaluation.data", STRING, ""],
  ["evaluation.split", STRING, ""],
  ["high_quality_levels", LIST, ""], ["role", STRINGS, ""], ["versions", OBJECT, ""], ["parity", OBJECT, ""], ["variant", OBJECT, ""],
];
/** The jobs a shipped bundle can be the default for (model.json "role"). */
export const ROLES = ["default", "lossless", "lossy", "near-lossless", "denoise"];
const MAX_IMAGE_SIDE = 4096, MAX_LATENT_DIM = 4096, MAX_COMPONENTS = 256, CHANNELS = [1, 3];

/** How a refusal names a JSON value (runtime/manifest.py's describe). */
function describe(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean" || typeof value === "number") return String(value);
  if (typeof value === "string") return "a string";
  return Array.isArray(value) ? "a list" : "an object";
}

function lookup(manifest, path) {
  let value = manifest;
  for (const key of path.split(".")) {
    if (!CHECKS[OBJECT](value) || !Object.hasOwn(value, key)) return [false, null];
    value = value[key];
  }
  return [true, value];
}

function checkFileName(name, where) {
  if (typeof name !== "string" || !name || name === "." || name === ".." || /[/\\\0]/.test(name) || name.length > 255) {
    throw new BundleError(`${where}: file name '${name}' is not a plain file name inside the bundle folder`);
  }
}

function checkFields(manifest, where, fields) {
  for (const [path, kind, flags] of fields) {
    const cut = path.lastIndexOf(".");
    const key = path.slice(cut + 1);
    const [present, parent] = cut < 0 ? [true, manifest] : lookup(manifest, path.slice(0, cut));
    if (!present || !CHECKS[OBJECT](parent)) continue;
    if (!Object.hasOwn(parent, key)) {
      if (flags === "r" || (flags.startsWith("?") && lookup(manifest, flags.slice(1))[0])) {
        throw new BundleError(`${where}: manifest is incomplete (${path} is missing)`);
      }
      continue;
    }
    const value = parent[key];
    if (value === null && flags === "n") continue;
    if (!CHECKS[kind](value)) throw new BundleError(`${where}: ${path} must be ${kind}, not ${describe(value)}`);
    if (kind === FILE) checkFileName(value, where);
  }
}

/** `manifest` if it is a valid edgevae bundle manifest, else BundleError naming the first problem (as Python does). */
export function validateManifest(manifest, where = MANIFEST_FILE) {
  if (!CHECKS[OBJECT](manifest) || !Object.hasOwn(manifest, "format")) {
    throw new BundleError(`${where}: not an edgevae bundle manifest`);
  }
  checkFields(manifest, where, FIELDS.slice(0, 2));
  if (manifest.format !== MANIFEST_FORMAT) throw new BundleError(`${where}: not an edgevae bundle manifest`);
  if (manifest.format_version !== MANIFEST_VERSION) {
    throw new BundleError(`${where}: bundle format version ${manifest.format_version} is not supported by this edgevae ` +
      `(supports ${MANIFEST_VERSION}); upgrade edgevae or re-export the bundle`);
  }
  checkFields(manifest, where, FIELDS);
  const need = (ok, what) => {
    if (!ok) throw new BundleError(`${where}: ${what}`);
  };
  const shape = manifest.image.shape;
  need(shape.length === 3, `image.shape [${shape.join(", ")}] is not three integers`);
  const [c, h, w] = shape;
  need(CHANNELS.includes(c), `image.shape has ${c} channels, edgevae handles ${CHANNELS.join(" or ")}`);
  need(h >= 1 && h <= MAX_IMAGE_SIDE && w >= 1 && w <= MAX_IMAGE_SIDE,
    `image.shape ${h}x${w} is not within 1..${MAX_IMAGE_SIDE} pixels a side`);
  const dim = manifest.latent.dim;
  need(dim >= 1 && dim <= MAX_LATENT_DIM, `latent.dim ${dim} is not an integer in 1..${MAX_LATENT_DIM}`);
  const kind = manifest.likelihood.kind;
  need(kind === LIKELIHOOD_KIND, `unknown likelihood '${kind}'`);
  const components = manifest.likelihood.components;
  need(components >= 1 && components <= MAX_COMPONENTS,
    `likelihood.components ${components} is not an integer in 1..${MAX_COMPONENTS}`);
  if (Object.hasOwn(manifest.graphs, "prior")) {
    const noise = manifest.prior.noise_dim;
    need(noise >= 1 && noise <= MAX_LATENT_DIM, `prior.noise_dim ${noise} is not an integer in 1..${MAX_LATENT_DIM}`);
  }
  const groups = manifest.pixel_groups ?? 1;
  need(!Object.hasOwn(manifest, "pixel_tile") || groups > 1, "pixel_tile needs pixel_groups > 1");
  let tile;
  try {
    tile = pixelTile(groups, manifest.pixel_tile);
  } catch (e) {
    if (!(e instanceof BundleError)) throw e;
    need(false, e.message);
  }
  need(tile.length <= h && tile[0].length <= w, // else a group would have no pixels
    `pixel_tile ${tile.length}x${tile[0].length} does not fit in the ${h}x${w} image`);
  need(Object.hasOwn(manifest.graphs, "context") === groups > 1,
    "graphs.context must be given exactly when pixel_groups > 1");
  for (const role of manifest.role ?? []) need(ROLES.includes(role), `role '${role}' is not one of ${ROLES.join(", ")}`);
  checkTensors(manifest, { channels: c, height: h, width: w, latent: dim, components }, where);
  return manifest;
}

/** The manifest's description of each coding graph's inputs and outputs, if given, must be the
 * contract's for this bundle's dimensions and arithmetic (runtime/manifest.py _check_tensors). */
function checkTensors(manifest, dims, where) {
  const arithmetic = manifest.arithmetic ?? ARITHMETIC_FLOAT;
  if (!ARITHMETICS.includes(arithmetic)) {
    throw new BundleError(`${where}: arithmetic must be one of ${ARITHMETICS.join(", ")}, not ${pythonRepr(arithmetic)}`);
  }
  for (const graph of codingGraphs(manifest)) {
    const entry = manifest.graphs[graph.key];
    const described = describeGraph(graph, dims);
    for (const side of ["inputs", "outputs"]) {
      if (Object.hasOwn(entry, side) && !pythonEqual(entry[side], described[side])) {
        throw new BundleError(`${where}: ${graph.key} ${side} ${pythonRepr(entry[side])} disagree with the bundle's own ` +
          `shapes ${pythonRepr(described[side])}`);
      }
    }
  }
}

/** Python's == on parsed JSON: dicts regardless of key order, true == 1 and false == 0. */
function pythonEqual(a, b) {
  const scalar = (v) => (typeof v === "boolean" ? Number(v) : v);
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((v, i) => pythonEqual(v, b[i]));
  }
  if (CHECKS[OBJECT](a) || CHECKS[OBJECT](b)) {
    if (!(CHECKS[OBJECT](a) && CHECKS[OBJECT](b))) return false;
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && pythonEqual(a[k], b[k]));
  }
  return scalar(a) === scalar(b);
}

/** Python's repr of a parsed JSON value (how Python's refusals quote what a manifest gave). JSON
 * numbers written with a fraction but an integer value (4.0) print as integers here. */
export function pythonRepr(value) {
  if (value === null || value === undefined) return "None";
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "number") return pythonNumber(value);
  if (typeof value === "string") return pythonString(value);
  if (Array.isArray(value)) return `[${value.map(pythonRepr).join(", ")}]`;
  return `{${Object.entries(value).map(([k, v]) => `${pythonString(k)}: ${pythonRepr(v)}`).join(", ")}}`;
}

function pythonNumber(v) {
  if (Number.isInteger(v) && Math.abs(v) < 2 ** 53) return String(v);
  if (!Number.isFinite(v)) return Number.isNaN(v) ? "nan" : v > 0 ? "inf" : "-inf";
  // the shortest digits that round-trip (as Python's repr), laid out by Python's float rules
  const [mantissa, exponent] = v.toExponential().split("e");
  const e = Number(exponent);
  if (e < -4 || e >= 16) {
    return `${mantissa}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }
  const negative = mantissa.startsWith("-");
  const digits = mantissa.replace("-", "").replace(".", "");
  let text;
  if (e < 0) text = `0.${"0".repeat(-e - 1)}${digits}`;
  else if (digits.length > e + 1) text = `${digits.slice(0, e + 1)}.${digits.slice(e + 1)}`;
  else text = `${digits}${"0".repeat(e + 1 - digits.length)}.0`;
  return negative ? `-${text}` : text;
}

function pythonString(s) {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const code = ch.codePointAt(0);
    if (ch === "\\" || ch === quote) out += `\\${ch}`;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (code < 0x20 || (code >= 0x7f && code <= 0xa0) || code === 0xad) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else out += ch;
  }
  return out + quote;
}

/** A verified bundle: its manifest, its files' bytes (checked against their sha256) and its fingerprint. */
export class Bundle {
  constructor(source, manifest, files, fingerprint) {
    this.source = source;
    this.manifest = manifest;
    this.files = files; // key ("encoder", "decoder", "codec") -> Uint8Array
    this.fingerprint = fingerprint;
  }

  get location() {
    return this.source.label;
  }

  get name() {
    return String(this.manifest.name ?? this.source.label.split("/").pop());
  }

  /** [C, H, W] of the model's images. */
  get imageShape() {
    return this.manifest.image.shape.map(Number);
  }

  get latentDim() {
    return Number(this.manifest.latent.dim);
  }

  /** Mixture components of the decoder's likelihood. */
  get components() {
    return Number(this.manifest.likelihood.components);
  }

  /** "float" or "integer" (model.json "arithmetic"): integer graphs output the coders' grid indices. */
  get arithmetic() {
    return this.manifest.arithmetic ?? ARITHMETIC_FLOAT;
  }

  /** Kind of the bundle's learned sampling prior (prior.onnx), or null: sampling uses N(0, I). */
  get priorKind() {
    return this.manifest.graphs.prior ? String(this.manifest.prior.kind) : null;
  }

  /**
   * The verified bytes of an optional graph the manifest names ("prior"): read and checked against
   * its sha256 when first asked for, so loading for the codec never fetches it.
   */
  async optionalGraph(key) {
    if (!this.files[key]) {
      const entry = this.manifest.graphs?.[key];
      if (typeof entry?.file !== "string" || typeof entry?.sha256 !== "string") {
        throw new BundleError(`${this.location}: this bundle has no ${key} graph`);
      }
      const bytes = await this.source.read(entry.file);
      if (bytes === null) throw new BundleError(`${this.source.label}: bundle is partial, ${entry.file} is missing`);
      if (hex(await sha256(bytes)) !== entry.sha256) {
        throw new BundleError(`${this.source.where(entry.file)}: sha256 does not match model.json (file altered or from another bundle)`);
      }
      this.files[key] = bytes;
    }
    return this.files[key];
  }

  /** The codec tables (codec.json), validated; BundleError if the bundle has none. */
  async codecTables() {
    if (!this.files.codec) {
      throw new BundleError(`${this.location}: this model bundle has no codec tables (${TABLES_FILE}); export it again with ` +
        `'edgevae-train export' or add them with 'edgevae-train codec-tables ${this.location}'`);
    }
    this._tables ??= parseTables(this.files.codec, this.latentDim, this.source.where(this.manifest.codec.file));
    return this._tables;
  }
}

/** The fingerprint of a manifest: sha256 over the raw digests of encoder, decoder (a context
 * bundle's context graph next, then the sha256 of its pixel_tile's text if given) and codec tables. */
export async function fingerprintOf(manifest) {
  const digests = codingGraphs(manifest).map((g) => fromHex(manifest.graphs[g.key].sha256));
  if (Object.hasOwn(manifest, "pixel_tile")) digests.push(await sha256(new TextEncoder().encode(tileText(manifest.pixel_tile))));
  if (manifest.codec) digests.push(fromHex(manifest.codec.sha256));
  const joined = new Uint8Array(32 * digests.length);
  digests.forEach((d, i) => joined.set(d, 32 * i));
  return sha256(joined);
}

/** Read a bundle's manifest only (enough for its shapes and fingerprint): {source, manifest, fingerprint}. */
export async function readManifest(location) {
  const source = new Source(await resolveLocation(location));
  await source.checkFolder();
  const raw = await source.read(MANIFEST_FILE);
  if (raw === null) throw new BundleError(`${source.label}: not a model bundle (no ${MANIFEST_FILE})`);
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch (e) {
    throw new BundleError(`${source.where(MANIFEST_FILE)}: unreadable manifest (${e.name})`);
  }
  validateManifest(manifest, source.where(MANIFEST_FILE));
  return { source, manifest, fingerprint: await fingerprintOf(manifest) };
}

/** Read and verify a bundle from a folder path, a URL or a shipped bundle's name. BundleError on any problem. */
export async function readBundle(location) {
  const { source, manifest, fingerprint } = await readManifest(location);
  const entries = codingGraphs(manifest).map((g) => [g.key, manifest.graphs[g.key]]);
  if (manifest.codec) entries.push(["codec", manifest.codec]);
  const files = {};
  for (const [key, entry] of entries) {
    const bytes = await source.read(entry.file);
    if (bytes === null) throw new BundleError(`${source.label}: bundle is partial, ${entry.file} is missing`);
    if (hex(await sha256(bytes)) !== entry.sha256) {
      throw new BundleError(`${source.where(entry.file)}: sha256 does not match model.json (file altered or from another bundle)`);
    }
    files[key] = bytes;
  }
  return new Bundle(source, manifest, files, fingerprint);
}

/**
 * The shipped bundle whose fingerprint made container `bytes` (prefix and checksum match), as
 * its location, or null (also for a container too damaged to parse). Node only.
 */
export async function shippedBundleFor(bytes) {
  const { parse, fingerprintPrefix } = await import("./container.js");
  let parsed;
  try {
    parsed = parse(bytes);
  } catch {
    return null;
  }
  for (const name of await shippedBundleNames()) {
    let found;
    try {
      found = await readManifest(new URL(`${name}/`, SHIPPED_BUNDLES));
    } catch {
      continue;
    }
    if (parsed.header.fingerprintPrefix !== fingerprintPrefix(found.fingerprint)) continue;
    try {
      parsed.verify(found.fingerprint, found.manifest.image.shape.map(Number));
    } catch {
      continue;
    }
    return new URL(`${name}/`, SHIPPED_BUNDLES);
  }
  return null;
}
