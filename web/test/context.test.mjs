// Pixel groups of context bundles (docs/FORMAT.md §7.10) and the manifest rules of integer context
// bundles in web/: the groups' positions as runtime/bitsback.py's _group_positions gives them, and
// the graphs' described tensors checked against the contract of the bundle's arithmetic.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";

import { groupPositions } from "../bitsback.js";
import { ARITHMETIC_INTEGER, codingGraphs, describeGraph, pixelTile, pythonRepr, validateManifest } from "../bundle.js";

const vectors = JSON.parse(await readFile(new URL("../../tests/fixtures/bad-manifests.json", import.meta.url), "utf-8"));

test("the groups of the default 4-group tile: (0,0), (1,1), (0,1), (1,0) of every 2x2 block", () => {
  const groups = groupPositions(4, pixelTile(4), [1, 4, 4]);
  assert.deepEqual(groups.map((g) => Array.from(g)), [[0, 2, 8, 10], [5, 7, 13, 15], [1, 3, 9, 11], [4, 6, 12, 14]]);
});

test("a tile repeats over the image; every channel of a pixel is in its group, C-H-W order kept", () => {
  const groups = groupPositions(2, [[0, 1, 1]], [3, 2, 4]); // 3 channels of 2 x 4, tile 1 x 3
  // columns 0 and 3 are group 0, columns 1 and 2 group 1
  const want0 = [];
  const want1 = [];
  for (let c = 0; c < 3; c++) {
    for (let r = 0; r < 2; r++) {
      for (let x = 0; x < 4; x++) (x % 3 === 0 ? want0 : want1).push(c * 8 + r * 4 + x);
    }
  }
  assert.deepEqual(groups.map((g) => Array.from(g)), [want0, want1]);
  assert.deepEqual(Array.from(groupPositions(1, [[0]], [1, 2, 2])[0]), [0, 1, 2, 3]);
});

test("an integer context bundle's manifest is valid when its graphs are described as the integer contract's", () => {
  const manifest = structuredClone(vectors.base);
  manifest.arithmetic = ARITHMETIC_INTEGER;
  const [c, h, w] = manifest.image.shape;
  const dims = { channels: c, height: h, width: w, latent: manifest.latent.dim, components: manifest.likelihood.components };
  const graphs = codingGraphs(manifest);
  assert.deepEqual(graphs.map((g) => g.key), ["encoder", "decoder", "context"]);
  assert.deepEqual(graphs[2].inputs, ["mixture_logit_index", "mixture_mean_index", "mixture_log_scale_index", "pixels", "known"]);
  for (const graph of graphs) Object.assign(manifest.graphs[graph.key], describeGraph(graph, dims));
  validateManifest(manifest, "model.json");
  // the float context graph's description in an integer bundle is refused, quoted as Python quotes it
  const float = structuredClone(vectors.base.graphs.context.outputs);
  manifest.graphs.context.outputs = float;
  assert.throws(() => validateManifest(manifest, "model.json"), {
    message: `model.json: context outputs ${pythonRepr(float)} disagree with the bundle's own shapes ` +
      `${pythonRepr(describeGraph(graphs[2], dims).outputs)}`,
  });
  assert.match(pythonRepr(float), /^\[\{'name': 'context_logits', 'dtype': 'float32', 'shape': \['batch', 2, 1, 8, 8\]\}/);
});

test("Python's repr of JSON values", () => {
  assert.equal(pythonRepr([null, true, false, 3, 0.5, 1e-7, 1e22, "it's", 'say "x"', { a: [] }]),
    "[None, True, False, 3, 0.5, 1e-07, 1e+22, \"it's\", 'say \"x\"', {'a': []}]");
});
