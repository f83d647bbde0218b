#!/usr/bin/env node
// evz: compress uint8 .npy images to .evz containers and back, byte-for-byte as Python edgevae.
// A thin layer over the package (index.js): parse arguments, call, print; errors are one line, exit 2.

import { parseArgs } from "node:util";
import { readFile, writeFile, rename, unlink, stat } from "node:fs/promises";
import { load, Codec, container, shippedBundleFor, shippedBundleNames, EdgeVAEError, InputError, ContainerError } from "./index.js";
import { readNpy, writeNpy } from "./npy.js";

const HELP = `usage: node web/evz.mjs COMMAND ...

Read and write edgevae .evz containers (lossy) exactly as Python edgevae does.

commands:
  compress IN.npy OUT.evz --bundle B [--quality Q] [--split] [--force]
      Compress uint8 images (N, C, H, W) (or one (C, H, W)) from a .npy file into one
      container (--split: OUT.evz names a folder that gets one container per image,
      0.evz, 1.evz ...). Q is a quality name of the bundle's codec.json or its index
      (default: the bundle's default quality, 'balanced' for the shipped bundles).
  decompress IN.evz OUT.npy [--bundle B] [--index I]... [--force]
      Decode a container to uint8 images (N, C, H, W) in a .npy file. Without --bundle
      the shipped bundle that made the container is found by its fingerprint.
      --index I (repeatable) decodes only image I (random access).
  info IN.evz [--bundle B]
      Describe a container (count, quality, sizes) and check it against a bundle.

options:
  --bundle B     a bundle folder, URL, or the name of a shipped bundle (fashion-mnist-codec ...)
  --threads N    ONNX Runtime intra-op threads (default: its own choice)
  --force        overwrite OUT if it exists
  -h, --help     this help

Lossless containers (mode 1) are decoded by Python edgevae only (docs/FORMAT.md §7).
Errors print one line and exit with status 2.`;

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

async function compress(args, opts) {
  if (args.length !== 2) throw new UsageError("compress takes IN.npy and OUT.evz");
  const [input, output] = args;
  if (!opts.bundle) {
    throw new UsageError(`compress needs --bundle (a folder, or a shipped bundle's name: ${(await shippedBundleNames()).join(", ")})`);
  }
  const { data, shape } = readNpy(await readInput(input), input);
  const codec = await codecFor(opts.bundle, opts.threads);
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
  const codec = await codecFor(await bundleForContainer(bytes, opts.bundle), opts.threads);
  const pixels = await codec.decompress(bytes, { indices });
  const count = pixels.length / codec.model.imageSize;
  await writeOutput(output, writeNpy(pixels, [count, ...codec.model.imageShape]), opts.force);
  console.error(`decompressed ${count} image(s) from ${bytes.length} bytes to ${output}`);
}

async function info(args, opts) {
  if (args.length !== 1) throw new UsageError("info takes IN.evz");
  const bytes = await readInput(args[0]);
  const codec = await codecFor(await bundleForContainer(bytes, opts.bundle), opts.threads);
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
        threads: { type: "string" }, split: { type: "boolean" }, force: { type: "boolean" }, help: { type: "boolean", short: "h" },
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
