// Drives web/index.html in headless Chromium (Debian's /usr/bin/chromium through playwright-core,
// no browser download) for tests/test_web.py, and takes the README's screenshot.
//
//   node web/test/page.mjs SPEC.json RESULT.json
//
// SPEC: {chromium, image (a PNG to compress through the page's file input), container (a .evz
//        to open through the page), bulk: [{bundle, container, images?, quality}] (decoded and
//        compressed in the page for the WASM parity figures), screenshot (optional PNG path),
//        translucent: [PNG paths] (images with transparent pixels, picked in turn after the rest),
//        mounts: {URL prefix: folder} (extra folders the server serves, e.g. a test's integer bundle),
//        exact: [{bundle (URL path), container, images?, max_error?, quality?}] (lossless and
//        near-lossless containers of an integer bundle decoded, and the images compressed, in the
//        page; with quality: a lossy container of that bundle),
//        opened_exact: [.evz paths] (opened through the page's file input, like a user)}
// RESULT: what the page showed, as JSON (bytes and pixels as arrays).

import { readFile, writeFile } from "node:fs/promises";
import { chromium } from "playwright-core";
import { staticServer } from "../serve.mjs";

const [specPath, resultPath] = process.argv.slice(2);
const spec = JSON.parse(await readFile(specPath, "utf-8"));
const server = staticServer(undefined, spec.mounts ?? {});
await new Promise((done) => server.listen(0, "127.0.0.1", done));
const origin = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({
  executablePath: spec.chromium ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
  // playwright gives every launch a fresh temporary profile (user data dir) of its own
});
const result = { console: [], requests: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1000 }, deviceScaleFactor: 1 });
  page.on("console", (m) => m.type() === "error" && result.console.push(m.text()));
  page.on("pageerror", (e) => result.console.push(String(e)));
  page.on("request", (r) => { if (!r.url().startsWith(origin)) result.requests.push(r.url()); });
  await page.goto(`${origin}/web/index.html`);
  await page.waitForFunction(() => window.edgevaePage?.ready, null, { timeout: 120000 });
  await page.evaluate(() => window.edgevaePage.ready);
  result.status = await page.textContent("#status");
  const grab = (key) => page.evaluate((k) => {
    const last = window.edgevaePage.last[k];
    return Object.fromEntries(Object.entries(last).map(([name, v]) => [name, ArrayBuffer.isView(v) ? Array.from(v) : v]));
  }, key);
  result.samples = [await grab("samples")];
  await page.fill("#seed", "5");
  await page.waitForFunction(() => window.edgevaePage.last.samples.seed === 5);
  result.samples.push(await grab("samples"));
  await page.fill("#blend-t", "0");
  await page.dispatchEvent("#blend-t", "input");
  await page.waitForFunction(() => window.edgevaePage.last.blend.t === 0);
  result.blend = [await grab("blend")];
  await page.evaluate(() => { const s = document.getElementById("blend-t"); s.value = "0.5"; s.dispatchEvent(new Event("input")); });
  await page.waitForFunction(() => window.edgevaePage.last.blend.t === 0.5);
  result.blend.push(await grab("blend"));
  // Compress a picked image: through the file input, as a user does.
  await page.setInputFiles("#compress-file", spec.image);
  await page.waitForFunction((name) => window.edgevaePage.last.compress?.label === name, spec.image.split("/").pop());
  result.compress = await grab("compress");
  result.compressHex = await page.textContent("#compress-hex");
  // Open a .evz made by Python.
  await page.setInputFiles("#open-file", spec.container);
  await page.waitForFunction(() => window.edgevaePage.last.open, null, { timeout: 60000 });
  result.open = await grab("open");
  result.openSummary = await page.textContent("#open-summary");
  // WASM parity figures: decode Python's containers and compress the same images in the page.
  result.bulk = [];
  for (const job of spec.bulk ?? []) {
    const container = Array.from(await readFile(job.container));
    const images = job.images ? Array.from(await readFile(job.images)) : null;
    result.bulk.push(await page.evaluate(async ({ bundle, container, images, quality }) => {
      const { api, ort, codecs } = window.edgevaePage;
      const codec = codecs[bundle] ?? await api.Codec.create(await api.load(new URL(`../exported/${bundle}/`, location.href), { ort }));
      const pixels = await codec.decompress(Uint8Array.from(container));
      const made = images ? await codec.compress(Uint8Array.from(images), { quality }) : null;
      return { pixels: Array.from(pixels), container: made && Array.from(made) };
    }, { ...job, container, images }));
  }
  // Lossless and near-lossless containers of an integer bundle, decoded and written in the page.
  result.exact = [];
  for (const job of spec.exact ?? []) {
    const container = Array.from(await readFile(job.container));
    const images = job.images ? Array.from(await readFile(job.images)) : null;
    result.exact.push(await page.evaluate(async ({ bundle, container, images, max_error, quality }) => {
      const { api, ort } = window.edgevaePage;
      const model = await api.load(new URL(bundle, location.href), { ort });
      // quality: a lossy container of the integer bundle (its decoder runs on integer latents too)
      const codec = quality !== undefined ? await api.Codec.create(model) : await api.ExactCodec.create(model, { maxError: max_error ?? 0 });
      try {
        const pixels = await codec.decompress(Uint8Array.from(container));
        const made = images ? await codec.compress(Uint8Array.from(images), quality !== undefined ? { quality } : {}) : null;
        return { pixels: Array.from(pixels), container: made && Array.from(made), error: null };
      } catch (e) {
        return { error: String(e.message) };
      }
    }, { ...job, container, images }));
  }
  result.openedExact = [];
  for (const file of spec.opened_exact ?? []) {
    const before = await page.textContent("#status");
    await page.setInputFiles("#open-file", file);
    const name = file.split("/").pop();
    // decoded (its name shows up), or refused (the status changes to an error)
    await page.waitForFunction(({ n, b }) => window.edgevaePage.last.open?.name === n ||
      (document.getElementById("status").classList.contains("error") && document.getElementById("status").textContent !== b),
    { n: name, b: before }, { timeout: 120000 });
    if (await page.evaluate((n) => window.edgevaePage.last.open?.name === n, name)) {
      result.openedExact.push({ ...(await grab("open")), summary: await page.textContent("#open-summary"), error: null });
    } else {
      result.openedExact.push({ error: await page.textContent("#status") });
    }
  }
  if (spec.screenshot) {
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: spec.screenshot, fullPage: true });
  }
  // A bad file after a good one (after the screenshot, which shows the good state): the page must
  // show the error and no longer show the previous file's images and summary.
  const afterError = async (input, file, area, summary, key) => {
    const before = await page.textContent("#status");
    await page.setInputFiles(input, file);
    await page.waitForFunction((b) => document.getElementById("status").textContent !== b, before);
    return page.evaluate(({ area, summary, key }) => ({
      status: document.getElementById("status").textContent,
      error: document.getElementById("status").classList.contains("error"),
      hidden: document.getElementById(area).hidden,
      summary: document.getElementById(summary).textContent,
      last: window.edgevaePage.last[key],
    }), { area, summary, key });
  };
  result.openError = await afterError("#open-file", { name: "junk.evz", mimeType: "application/octet-stream",
    buffer: Buffer.from("not a container") }, "open-grid", "open-summary", "open");
  result.compressError = await afterError("#compress-file", { name: "junk.png", mimeType: "image/png",
    buffer: Buffer.from("not an image") }, "compress-result", "compress-summary", "compress");
  // Translucent images: refused at the model's size, composited over black when the page resizes.
  result.translucent = [];
  for (const file of spec.translucent ?? []) {
    const outcome = await afterError("#compress-file", file, "compress-result", "compress-summary", "compress");
    result.translucent.push({ ...outcome, last: outcome.last && { original: Object.values(outcome.last.original) } });
  }
} finally {
  await browser.close();
  server.close();
}
await writeFile(resultPath, JSON.stringify(result));
