// Parity driver for tests/test_web.py: runs a JSON list of jobs through the package on
// onnxruntime-node and writes what it got, so Python can compare with its own results.
//
//   node web/test/parity.mjs JOBS.json RESULTS.json
//
// job {op: "decode", bundle, container, indices?, out}   -> writes pixels (.npy) or reports the error
// job {op: "encode", bundle, images, quality, split?, out} -> writes the container(s) (split: out.0, out.1 ...)
//     with lossless: true or max_error: K (an integer bundle): a lossless / near-lossless container
// A decode job of a lossless or near-lossless container of an integer bundle uses ExactCodec.
// job {op: "interpolate", bundle, images (two), steps, out}  -> writes the blend's pixels
// job {op: "sample", bundle, n, seed, temperature, out}      -> writes the samples' pixels
// RESULTS.json: one {error: message | null} per job, in order.

import { readFile, writeFile } from "node:fs/promises";
import { load, Codec, ExactCodec, EdgeVAEError, container } from "../index.js";
import { readNpy, writeNpy } from "../npy.js";

const [jobsPath, resultsPath] = process.argv.slice(2);
const jobs = JSON.parse(await readFile(jobsPath, "utf-8"));
const models = new Map();
const modelFor = async (bundle) => {
  if (!models.has(bundle)) models.set(bundle, await load(bundle, { threads: 1 }));
  return models.get(bundle);
};
const codecs = new Map();
/** The lossy Codec of a bundle, or its ExactCodec (maxError K; 0 = lossless) when `exact`. */
const codecFor = async (bundle, exact = false, maxError = 0) => {
  const key = `${bundle}|${exact}|${maxError}`;
  if (!codecs.has(key)) {
    const model = await modelFor(bundle);
    codecs.set(key, exact ? await ExactCodec.create(model, { maxError }) : await Codec.create(model));
  }
  return codecs.get(key);
};

const results = [];
for (const job of jobs) {
  try {
    const model = await modelFor(job.bundle);
    let codec;
    if (job.op === "decode") {
      const bytes = new Uint8Array(await readFile(job.container));
      let exact = false;
      try {
        exact = model.integer && container.parse(bytes).header.mode !== container.MODE_LOSSY;
      } catch { /* damaged framing: the lossy codec reports it as Python does */ }
      codec = await codecFor(job.bundle, exact);
      const pixels = await codec.decompress(bytes, { indices: job.indices ?? undefined });
      await writeFile(job.out, writeNpy(pixels, [pixels.length / codec.model.imageSize, ...codec.model.imageShape]));
    } else if (job.op === "encode") {
      codec = await codecFor(job.bundle, Boolean(job.lossless || job.max_error), job.max_error ?? 0);
      const { data } = readNpy(new Uint8Array(await readFile(job.images)));
      if (job.split) {
        const containers = await codec.compressEach(data, { quality: job.quality });
        for (const [i, bytes] of containers.entries()) await writeFile(`${job.out}.${i}`, bytes);
      } else {
        await writeFile(job.out, await codec.compress(data, { quality: job.quality }));
      }
    } else if (job.op === "interpolate") {
      codec = await codecFor(job.bundle);
      const { data } = readNpy(new Uint8Array(await readFile(job.images)));
      const size = codec.model.imageSize;
      const pixels = await codec.model.interpolate(data.subarray(0, size), data.subarray(size, 2 * size), job.steps);
      await writeFile(job.out, writeNpy(pixels, [job.steps, ...codec.model.imageShape]));
    } else if (job.op === "sample") {
      codec = await codecFor(job.bundle);
      const pixels = await codec.model.sample(job.n, { seed: job.seed, temperature: job.temperature });
      await writeFile(job.out, writeNpy(pixels, [job.n, ...codec.model.imageShape]));
    } else {
      throw new Error(`unknown op ${job.op}`);
    }
    results.push({ error: null });
  } catch (e) {
    if (!(e instanceof EdgeVAEError)) throw e;
    results.push({ error: e.message });
  }
}
await writeFile(resultsPath, JSON.stringify(results));
