#!/usr/bin/env node
// evz: compress uint8 .npy images to .evz containers and back, byte-for-byte as Python edgevae.
// A thin layer over the package (index.js): parse arguments, call, print; errors are one line, exit 2.

import { parseArgs } from "node:util";
import { readFile, writeFile, rename, unlink, stat } from "node:fs/promises";
import { load, Codec, ExactCodec, container, shippedBundleFor, shippedBundleNames, EdgeVAEError, InputError, ContainerError } from "./index.js";
import { readNpy, writeNpy } from "./npy.js";

const HELP = `usage: node web/evz.mjs COMMAND ...

Read and write edgevae .evz containers exactly as Python edgevae does: byte-identical
files, identical pixels.

commands:
  compress IN.npy OUT.evz --bundle B [--quality Q | --lossless | --max-error K] [--split] [--force]
      Compress uint8 images (N, C, H, W) (or one (C, H, W)) from a .npy file into one
      container (--split: OUT.evz names a folder that gets one container per image,
      0.evz, 1.evz ...).
        --quality Q     lossy (the default): Q is a quality name of the bundle's codec.json
                        or its index (default: the bundle's default quality).
        --lossless      every pixel comes back exactly (bits-back coding, FORMAT.md §7).
        --max-error K   near-lossless: every pixel comes back within K levels, K = 1..32
                        (FORMAT.md §8).
      --lossless and --max-error need an INTEGER bundle (model.json "arithmetic":
      "integer", e.g. fashion-mnist-exact): its graphs compute with integers only, so
      JavaScript, browsers and Python build the same probability tables. An integer
      context bundle (pixel groups, e.g. fashion-mnist-context2-exact) makes --lossless
      files only.
  decompress IN.evz OUT.npy [--bundle B] [--index I]... [--force]
      Decode a container (lossy, or lossless / near-lossless of an integer bundle) to uint8
      images (N, C, H, W) in a .npy file. Without --bundle the shipped bundle that made the
      container is found by its fingerprint. --index I (repeatable) keeps only image I
      (lossless and near-lossless files decode whole, their images are chained).
  info IN.evz [--bundle B]
      Describe a container (count, mode, quality, sizes) and check it against a bundle.

options:
  --bundle B     a bundle folder, URL, or the name of a shipped bundle (fashion-mnist-codec ...)
  --threads N    ONNX Runtime intra-op threads (default: its own choice)
  --force        overwrite OUT if it exists
  -h, --help     this help

examples:
  node web/evz.mjs compress shirts.npy shirts.evz --bundle fashion-mnist-codec --quality sharp
  node web/evz.mjs compress scans.npy scans.evz --bundle fashion-mnist-exact --lossless
  node web/evz.mjs compress scans.npy scans.evz --bundle fashion-mnist-exact --max-error 2
  node web/evz.mjs decompress scans.evz scans.npy

Lossless and near-lossless containers of float bundles (format versions 1 and 2) are decoded
by Python edgevae only (docs/FORMAT.md §7). Errors print one line and exit with status 2.`;

class UsageError extends InputError {}

async function exists(path) {
  return stat(path).then(() => true, () => false);
}

/** Write atomically: a temporary file renamed into place, so a failure never leaves partial output. */
async function writeOutput(path, bytes, force) {
  if (!force && (await exists(path))) throw new InputError(`${path} exists; pass --force to overwrite it`);
  const temporary = `${path}.partial-${process.pid}`;
  try {
    await writeFile(temporary, bytes);
    await rename(temporary, path);
  } catch (e) {
    await unlink(temporary).catch(() => {});
    throw new InputError(`cannot write ${path} (${e.code ?? e.message})`);
  }
}

async function readInput(path) {
  try {
    return new Uint8Array(await readFile(path));
  } catch (e) {
    throw new InputError(`cannot read ${path} (${e.code === "ENOENT" ? "no such file" : e.code ?? e.message})`);
  }
}

async function codecFor(bundle, threads) {
  return Codec.create(await load(bundle, { threads }));
}

/** The codec that reads a container: ExactCodec for lossless/near-lossless of an integer bundle. */
async function readerFor(bytes, bundle, threads) {
  const model = await load(bundle, { threads });
  const { header } = container.parse(bytes);
  if (model.integer && header.mode !== container.MODE_LOSSY) return ExactCodec.create(model);
  // a float lossless or near-lossless file needs no codec tables to be described (decoding it is refused by name)
  if (header.mode !== container.MODE_LOSSY && !model.bundle.manifest.codec) return new Codec(model, null);
  return Codec.create(model);
}

/** The mode compress's options ask for, with Python's messages for options that do not go together. */
function compressMode(opts) {
  if (opts.lossless && opts.quality !== undefined) throw new UsageError("--quality does not apply to --lossless (lossless keeps every pixel)");
  if (opts["max-error"] !== undefined && (opts.lossless || opts.quality !== undefined)) {
    throw new UsageError(`--max-error does not combine with ${opts.lossless ? "--lossless" : "--quality"}: ` +
      "choose one of --quality, --max-error K, --lossless");
  }
  if (opts["max-error"] !== undefined) {
    const k = opts["max-error"];
    if (!/^\d+$/.test(k) || !(Number(k) >= 1 && Number(k) <= container.MAX_ERROR)) {
      throw new UsageError(`max error must be an integer from 1 to ${container.MAX_ERROR} (pixel levels), got ${k}`);
    }
    return { mode: "near-lossless", maxError: Number(k) };
  }
  return { mode: opts.lossless ? "lossless" : "lossy", maxError: 0 };
}

async function compress(args, opts) {
  if (args.length !== 2) throw new UsageError("compress takes IN.npy and OUT.evz");
  const [input, output] = args;
  if (!opts.bundle) {
    throw new UsageError(`compress needs --bundle (a folder, or a shipped bundle's name: ${(await shippedBundleNames()).join(", ")})`);
  }
  const { mode, maxError } = compressMode(opts);
  const { data, shape } = readNpy(await readInput(input), input);
  const codec = mode === "lossy" ? await codecFor(opts.bundle, opts.threads)
    : await ExactCodec.create(await load(opts.bundle, { threads: opts.threads }), { maxError });
  const [c, h, w] = codec.model.imageShape;
  const batched = shape.length === 3 ? [1, ...shape] : shape;
  if (batched.length !== 4 || batched[1] !== c || batched[2] !== h || batched[3] !== w) {
    throw new InputError(`images must have shape (N, ${c}, ${h}, ${w}), got (${shape.join(", ")})`);
  }
  if (opts.split) {
    const containers = await codec.compressEach(data, { quality: opts.quality });
    const { mkdir } = await import("node:fs/promises");
    await mkdir(output, { recursive: true }).catch((e) => { throw new InputError(`cannot create ${output} (${e.code})`); });
    for (const [i, bytes] of containers.entries()) await writeOutput(`${output}/${i}.evz`, bytes, opts.force);
    console.error(`compressed ${containers.length} image(s) to ${containers.length} containers in ${output}/`);
    return;
  }
  const bytes = await codec.compress(data, { quality: opts.quality });
  await writeOutput(output, bytes, opts.force);
  console.error(`compressed ${batched[0]} image(s) to ${bytes.length} bytes: ${output}`);
}

/** --bundle if given, else the shipped bundle that made the container (fingerprint prefix and CRC). */
async function bundleForContainer(bytes, bundle) {
  if (bundle) return bundle;
  const shipped = await shippedBundleFor(bytes);
  if (shipped) return shipped;
  const { header } = container.parse(bytes); // a structural problem is reported as such
  // No shipped bundle vouches for it (prefix and checksum): name both causes and the fix, as Python does.
  throw new ContainerError(`container was made by another model that is not shipped (fingerprint ${header.fingerprintPrefix.toString(16)}..), ` +
    "or it is damaged; if you made it with your own bundle, pass that bundle with --bundle");
}

async function decompress(args, opts) {
  if (args.length !== 2) throw new UsageError("decompress takes IN.evz and OUT.npy");
  const [input, output] = args;
  const bytes = await readInput(input);
  const indices = opts.index?.map((i) => {
    if (!/^-?\d+$/.test(i)) throw new UsageError(`--index takes an integer, got '${i}'`);
    return Number(i);
  });
  const codec = await readerFor(bytes, await bundleForContainer(bytes, opts.bundle), opts.threads);
  const pixels = await codec.decompress(bytes, { indices });
  const count = pixels.length / codec.model.imageSize;
  await writeOutput(output, writeNpy(pixels, [count, ...codec.model.imageShape]), opts.force);
  console.error(`decompressed ${count} image(s) from ${bytes.length} bytes to ${output}`);
}

async function info(args, opts) {
  if (args.length !== 1) throw new UsageError("info takes IN.evz");
  const bytes = await readInput(args[0]);
  const codec = await readerFor(bytes, await bundleForContainer(bytes, opts.bundle), opts.threads);
  console.log(JSON.stringify({ ...codec.describe(bytes), bundle: codec.model.bundle.location }, null, 2));
}

const COMMANDS = { compress, decompress, info };

async function main(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        bundle: { type: "string" }, quality: { type: "string" }, index: { type: "string", multiple: true },
        threads: { type: "string" }, split: { type: "boolean" }, lossless: { type: "boolean" }, "max-error": { type: "string" }, force: { type: "boolean" }, help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    throw new UsageError(e.message.split("\n")[0]);
  }
  const { values, positionals } = parsed;
  if (values.help || positionals.length === 0) {
    console.log(HELP);
    if (!values.help) process.exitCode = 2;
    return;
  }
  const [command, ...args] = positionals;
  if (!(command in COMMANDS)) throw new UsageError(`unknown command '${command}' (choose compress, decompress or info; --help)`);
  const threads = values.threads === undefined ? undefined : Number(values.threads);
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1)) throw new UsageError(`--threads must be an integer >= 1, got '${values.threads}'`);
  await COMMANDS[command](args, { ...values, threads });
}

main(process.argv.slice(2)).catch((e) => {
  if (e instanceof EdgeVAEError) {
    console.error(`Error: ${e.message}`);
  } else {
    console.error(`Error: unexpected failure (${e?.name ?? "Error"}: ${String(e?.message ?? e).split("\n")[0]})`);
  }
  process.exitCode = 2;
});
