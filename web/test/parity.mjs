// Parity driver for tests/test_web.py: runs a JSON list of jobs through the package on
// onnxruntime-node and writes what it got, so Python can compare with its own results.
//
//   node web/test/parity.mjs JOBS.json RESULTS.json
//
// job {op: "decode", bundle, container, indices?, out}   -> writes pixels (.npy) or reports the error
// job {op: "encode", bundle, images, quality, split?, out} -> writes the container(s) (split: out.0, out.1 ...)
// job {op: "interpolate", bundle, images (two), steps, out}  -> writes the blend's pixels
// job {op: "sample", bundle, n, seed, temperature, out}      -> writes the samples' pixels
// RESULTS.json: one {error: message | null} per job, in order.

import { readFile, writeFile } from "node:fs/promises";
import { load, Codec, EdgeVAEError } from "../index.js";
import { readNpy, writeNpy } from "../npy.js";

const [jobsPath, resultsPath] = process.argv.slice(2);
const jobs = JSON.parse(await readFile(jobsPath, "utf-8"));
const codecs = new Map();
const codecFor = async (bundle) => {
  if (!codecs.has(bundle)) codecs.set(bundle, await Codec.create(await load(bundle, { threads: 1 })));
  return codecs.get(bundle);
};

const results = [];
for (const job of jobs) {
  const codec = await codecFor(job.bundle);
  try {
    if (job.op === "decode") {
      const bytes = new Uint8Array(await readFile(job.container));
      const pixels = await codec.decompress(bytes, { indices: job.indices ?? undefined });
      await writeFile(job.out, writeNpy(pixels, [pixels.length / codec.model.imageSize, ...codec.model.imageShape]));
    } else if (job.op === "encode") {
      const { data } = readNpy(new Uint8Array(await readFile(job.images)));
      if (job.split) {
        const containers = await codec.compressEach(data, { quality: job.quality });
        for (const [i, bytes] of containers.entries()) await writeFile(`${job.out}.${i}`, bytes);
      } else {
        await writeFile(job.out, await codec.compress(data, { quality: job.quality }));
      }
    } else if (job.op === "interpolate") {
      const { data } = readNpy(new Uint8Array(await readFile(job.images)));
      const size = codec.model.imageSize;
      const pixels = await codec.model.interpolate(data.subarray(0, size), data.subarray(size, 2 * size), job.steps);
      await writeFile(job.out, writeNpy(pixels, [job.steps, ...codec.model.imageShape]));
    } else if (job.op === "sample") {
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
