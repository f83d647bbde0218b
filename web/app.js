// The page (index.html): samples, a latent-space blend, in-browser compression and .evz decoding,
// all on the package (index.js) over onnxruntime-web. `window.edgevaePage` exposes the loaded
// models and the last results for the headless-browser test (tests/test_web.py).

import * as ort from "onnxruntime-web";
import { load, Codec, ExactCodec, container, readManifest, EdgeVAEError } from "./index.js";

// The bundles next to this page (served from the repository: ../exported/NAME/).
const SAMPLE_BUNDLE = "fashion-mnist";
const CODEC_BUNDLES = ["fashion-mnist-codec", "fashion-mnist-codec-hq", "fashion-mnist", "fashion-mnist-int8"];
/** Integer bundles (model.json "arithmetic": "integer") whose lossless and near-lossless files the page
 * opens too, when they are next to it (a missing one is skipped); the context one codes its pixels in
 * groups with an integer context.onnx (lossless files only). */
const INTEGER_BUNDLES = ["fashion-mnist-exact", "fashion-mnist-codec-exact", "fashion-mnist-context2-exact"];
const EXAMPLES = ["sneaker", "ankle-boot", "bag", "coat", "dress", "pullover", "sandal", "shirt", "trouser", "tshirt"];
const bundleUrl = (name) => new URL(`../exported/${name}/`, import.meta.url);
const exampleUrl = (name) => new URL(`../examples/${name}.png`, import.meta.url);

ort.env.wasm.numThreads = 1; // a plain static server gives no cross-origin isolation, hence no threads
ort.env.logLevel = "error";

const $ = (id) => document.getElementById(id);
const page = { ort, last: {}, models: {}, codecs: {}, exactCodecs: {} };
window.edgevaePage = page;

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function report(e) {
  status(e instanceof EdgeVAEError ? e.message : `unexpected error: ${e.message}`, true);
  if (!(e instanceof EdgeVAEError)) console.error(e);
}

/** `report`, after clearing a panel's result: a failed file must not leave the previous file's images up. */
const failed = (clear) => (e) => { clear(); report(e); };

// -- drawing ---------------------------------------------------------------------------------

/** Draw uint8 gray images (n * H * W) into a canvas as a grid of `columns`. */
function drawGrid(canvas, pixels, [c, h, w], columns) {
  const n = pixels.length / (c * h * w);
  const rows = Math.max(1, Math.ceil(n / columns));
  canvas.width = columns * w;
  canvas.height = rows * h;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  for (let i = 0; i < n; i++) {
    const ox = (i % columns) * w;
    const oy = Math.floor(i / columns) * h;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const at = 4 * ((oy + y) * canvas.width + ox + x);
        for (let ch = 0; ch < 3; ch++) image.data[at + ch] = pixels[i * c * h * w + (c === 1 ? 0 : ch * h * w) + y * w + x];
        image.data[at + 3] = 255;
      }
    }
  }
  ctx.putImageData(image, 0, 0);
}

/** How Python's messages describe an image's mode (runtime/images.py), read from a PNG's header
 * (its colour type) or the file's kind; a browser decodes every image to RGBA. */
const PNG_KINDS = { 0: "1 channel, gray", 2: "3 channels, RGB", 3: "palette", 4: "2 channels, gray + alpha", 6: "4 channels, RGBA" };
function imageKind(bytes, type) {
  const png = bytes.length > 25 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47;
  if (png) return PNG_KINDS[bytes[25]] ?? "PNG";
  return type === "image/gif" ? "palette" : "4 channels, RGBA";
}

/**
 * An image file or URL -> uint8 (C, H, W) for the model. A gray image of the model's size is
 * taken as it is (so the bytes equal Python's); others are converted to gray (PIL's weights)
 * and fitted (centre crop, then resize) by the browser's own scaler: the page's --resize.
 * Alpha follows Python's rule (runtime/images.py): an opaque alpha channel is ignored; transparent
 * pixels are refused with Python's message, unless the image is resized or converted anyway,
 * which composites it over black first, as --resize does.
 */
async function imagePixels(source, [c, h, w]) {
  const blob = source instanceof Blob ? source : await (await fetch(source)).blob();
  const name = source.name ?? source;
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new EdgeVAEError(`${name}: not a readable image`);
  }
  const whole = new OffscreenCanvas(bitmap.width, bitmap.height).getContext("2d", { willReadFrequently: true });
  whole.drawImage(bitmap, 0, 0);
  const all = whole.getImageData(0, 0, bitmap.width, bitmap.height).data;
  let transparent = false;
  let gray = true;
  for (let i = 0; i < all.length; i += 4) {
    transparent ||= all[i + 3] !== 255;
    gray &&= all[i] === all[i + 1] && all[i + 1] === all[i + 2];
  }
  const sameSize = bitmap.width === w && bitmap.height === h;
  const resized = !sameSize || gray !== (c === 1);
  if (transparent && !resized) {
    const kind = imageKind(new Uint8Array(await blob.slice(0, 32).arrayBuffer()), blob.type);
    throw new EdgeVAEError(`${name}: has transparent pixels (${kind}); edgevae codes opaque images only: ` +
      "flatten it first, or give an image the page resizes (another size or colour) to composite it over black");
  }
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  if (transparent) { // over black, as Python's ALPHA_BACKGROUND: the drawing composites
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, h);
  }
  if (sameSize) {
    ctx.drawImage(bitmap, 0, 0);
  } else {
    const scale = Math.min(bitmap.width / w, bitmap.height / h);
    const sw = w * scale;
    const sh = h * scale;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, (bitmap.width - sw) / 2, (bitmap.height - sh) / 2, sw, sh, 0, 0, w, h);
  }
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const out = new Uint8Array(c * h * w);
  for (let i = 0; i < h * w; i++) {
    const [r, g, b] = [rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2]];
    if (c === 1) out[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16; // ITU-R 601-2 luma, as PIL's convert("L")
    else for (let ch = 0; ch < 3; ch++) out[ch * h * w + i] = rgba[4 * i + ch];
  }
  return out;
}

// -- samples ---------------------------------------------------------------------------------

async function drawSamples() {
  const model = page.models[SAMPLE_BUNDLE];
  const seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
  const temperature = Number($("temperature").value);
  $("temperature-value").textContent = temperature.toFixed(2);
  const pixels = await model.sample(32, { seed, temperature });
  drawGrid($("sample-grid"), pixels, model.imageShape, 8);
  page.last.samples = { seed, temperature, pixels };
}

// -- blend -----------------------------------------------------------------------------------

const examplePixels = new Map();
async function example(name, shape) {
  if (!examplePixels.has(name)) examplePixels.set(name, await imagePixels(exampleUrl(name), shape));
  return examplePixels.get(name);
}

async function drawBlend() {
  const model = page.models[SAMPLE_BUNDLE];
  const a = await example($("blend-a").value, model.imageShape);
  const b = await example($("blend-b").value, model.imageShape);
  const t = Number($("blend-t").value);
  $("blend-t-value").textContent = t.toFixed(2);
  const { mean } = await model.encode(Uint8Array.from([...a, ...b]));
  const d = model.latentDim;
  const mix = new Float32Array(d).map((_, j) => (1 - t) * mean[j] + t * mean[d + j]);
  const [mixed, strip] = await Promise.all([model.decode(mix), model.interpolate(a, b, 10)]);
  drawGrid($("blend-a-image"), a, model.imageShape, 1);
  drawGrid($("blend-b-image"), b, model.imageShape, 1);
  drawGrid($("blend-mix"), mixed, model.imageShape, 1);
  drawGrid($("blend-strip"), strip, model.imageShape, 10);
  $("blend-caption").textContent = `${Math.round((1 - t) * 100)}% A + ${Math.round(t * 100)}% B`;
  page.last.blend = { t, pixels: mixed };
}

// -- compress --------------------------------------------------------------------------------

async function codec(name) {
  if (!page.codecs[name]) {
    page.models[name] ??= await load(bundleUrl(name), { ort });
    page.codecs[name] = await Codec.create(page.models[name]);
  }
  return page.codecs[name];
}

async function fillQualities() {
  const c = await codec($("codec-bundle").value);
  const previous = $("quality").value;
  $("quality").replaceChildren(...c.tables.qualities.map((q) => new Option(`${q.index}: ${q.name}`, q.name)));
  $("quality").value = c.qualities.includes(previous) ? previous : c.defaultQuality;
}

async function compressImage(source, label) {
  const c = await codec($("codec-bundle").value);
  const original = await imagePixels(source, c.model.imageShape);
  const bytes = await c.compress(original, { quality: $("quality").value });
  const decoded = await c.decompress(bytes);
  drawGrid($("compress-original"), original, c.model.imageShape, 1);
  drawGrid($("compress-decoded"), decoded, c.model.imageShape, 1);
  const hex = Array.from(bytes, (v) => v.toString(16).padStart(2, "0")).join(" ");
  $("compress-hex").textContent = hex;
  const pixelsCount = original.length;
  $("compress-summary").textContent = `${label}: ${pixelsCount} pixels (${pixelsCount} bytes raw) → ` +
    `${bytes.length} bytes (${((8 * bytes.length) / pixelsCount).toFixed(3)} bits/pixel), ` +
    `quality ${$("quality").value}, bundle ${$("codec-bundle").value}`;
  const link = $("compress-download");
  URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  link.download = `${label.replace(/\.[^.]*$/, "")}.evz`;
  $("compress-result").hidden = false;
  page.last.compress = { label, bytes, original, decoded };
  status(`compressed ${label} to ${bytes.length} bytes`);
}

function clearCompressed() {
  $("compress-result").hidden = true;
  $("compress-summary").textContent = "";
  $("compress-hex").textContent = "";
  page.last.compress = null;
}

// -- open a .evz -----------------------------------------------------------------------------

/** The model of a bundle next to the page (loaded once). */
async function model(name) {
  page.models[name] ??= await load(bundleUrl(name), { ort });
  return page.models[name];
}

/** The codec that reads `header`'s container with bundle `name`: an integer bundle's lossless and
 * near-lossless files need ExactCodec, everything else the lossy Codec (which refuses float
 * bundles' lossless files by name). */
async function readerFor(name, header) {
  const m = await model(name);
  if (m.integer && header.mode !== container.MODE_LOSSY) {
    page.exactCodecs[name] ??= await ExactCodec.create(m);
    return page.exactCodecs[name];
  }
  return codec(name);
}

/** The codec of the listed bundle whose fingerprint made the container (prefix, then CRC). */
async function codecForContainer(bytes) {
  const parsed = container.parse(bytes);
  let candidate = null;
  for (const name of [...CODEC_BUNDLES, ...INTEGER_BUNDLES]) {
    let found;
    try {
      found = await readManifest(bundleUrl(name));
    } catch (e) {
      if (INTEGER_BUNDLES.includes(name)) continue; // not next to this page
      throw e;
    }
    const { manifest, fingerprint } = found;
    if (container.fingerprintPrefix(fingerprint) !== parsed.header.fingerprintPrefix) continue;
    candidate ??= name;
    try {
      parsed.verify(fingerprint, manifest.image.shape);
      return [name, await readerFor(name, parsed.header)];
    } catch (e) {
      if (!(e instanceof EdgeVAEError)) throw e; // same prefix, another model: keep looking
    }
  }
  if (candidate) return [candidate, await readerFor(candidate, parsed.header)]; // reports the checksum mismatch
  throw new EdgeVAEError(`this .evz was made by a model this page does not have (fingerprint ${parsed.header.fingerprintPrefix.toString(16)}..)`);
}

async function openContainer(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const [name, c] = await codecForContainer(bytes);
  const pixels = await c.decompress(bytes);
  const info = c.describe(bytes);
  const count = pixels.length / c.model.imageSize;
  drawGrid($("open-grid"), pixels, c.model.imageShape, Math.min(count, Math.max(1, Math.ceil(Math.sqrt(count)))));
  $("open-grid").hidden = false;
  const kind = info.mode === "lossy" ? `quality ${info.quality}` : info.mode === "lossless" ? "lossless" : `near-lossless, max error ${info.maxError}`;
  $("open-summary").textContent = `${file.name}: ${bytes.length} bytes, ${count} image(s), ${kind}, bundle ${name}`;
  page.last.open = { name: file.name, bundle: name, mode: info.mode, pixels };
  status(`decoded ${count} image(s) from ${file.name}`);
}

function clearOpened() {
  $("open-grid").hidden = true;
  $("open-summary").textContent = "";
  page.last.open = null;
}

// -- wiring ----------------------------------------------------------------------------------

function onFile(input, drop, handler, clear) {
  const run = (file) => file && handler(file).catch(failed(clear));
  input.addEventListener("change", () => run(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); run(e.dataTransfer.files[0]); });
}

async function main() {
  for (const id of ["blend-a", "blend-b", "compress-example"]) $(id).replaceChildren(...EXAMPLES.map((n) => new Option(n, n)));
  $("blend-a").value = "sneaker";
  $("blend-b").value = "ankle-boot";
  $("compress-example").value = "sneaker";
  $("codec-bundle").replaceChildren(...CODEC_BUNDLES.map((n) => new Option(n, n)));
  page.models[SAMPLE_BUNDLE] = await load(bundleUrl(SAMPLE_BUNDLE), { ort });
  await fillQualities();
  await drawSamples();
  await drawBlend();
  await compressImage(exampleUrl("sneaker"), "sneaker.png");
  const again = (f) => () => f().catch(report);
  $("seed").addEventListener("input", again(drawSamples));
  $("temperature").addEventListener("input", again(drawSamples));
  $("reseed").addEventListener("click", () => { $("seed").value = Number($("seed").value) + 1; drawSamples().catch(report); });
  for (const id of ["blend-a", "blend-b", "blend-t"]) $(id).addEventListener("input", again(drawBlend));
  const recompress = () => compressImage(exampleUrl($("compress-example").value), `${$("compress-example").value}.png`);
  const compressAgain = (f) => () => f().catch(failed(clearCompressed));
  $("compress-example").addEventListener("change", compressAgain(recompress));
  $("codec-bundle").addEventListener("change", compressAgain(async () => { await fillQualities(); await recompress(); }));
  $("quality").addEventListener("change", compressAgain(recompress));
  onFile($("compress-file"), $("compress-drop"), (file) => compressImage(file, file.name), clearCompressed);
  onFile($("open-file"), $("open-drop"), openContainer, clearOpened);
  status(`ready: onnxruntime-web ${ort.env.versions?.web ?? ""} (WebAssembly), models loaded and verified by sha256`);
}

page.ready = main().then(() => true, (e) => { report(e); throw e; });
page.api = { load, Codec, ExactCodec, container };
