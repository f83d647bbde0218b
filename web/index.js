// edgevae for JavaScript: read and write .evz containers exactly as Python edgevae does and run
// a bundle's ONNX graphs, in browsers (onnxruntime-web) and Node (onnxruntime-node).
//
//     import { load, Codec } from "edgevae";          // or "./web/index.js"
//     const model = await load("exported/fashion-mnist-codec");
//     const codec = await Codec.create(model);
//     const bytes = await codec.compress(pixels, { quality: "balanced" });
//     const images = await codec.decompress(bytes);
//
//     // lossless / near-lossless, integer bundles (model.json "arithmetic": "integer"):
//     const exact = await ExactCodec.create(await load("exported/fashion-mnist-exact"), { maxError: 0 });

export { EdgeVAEError, InputError, BundleError, ContainerError } from "./errors.js";
export { load, EdgeVAE, gaussian, defaultOrt } from "./model.js";
export { readBundle, readManifest, shippedBundleFor, shippedBundleNames, Bundle } from "./bundle.js";
export { Codec, parseTables, lookupQuality } from "./codec.js";
export { ExactCodec } from "./lossless.js";
export * as container from "./container.js";
export * as rangecoder from "./rangecoder.js";
