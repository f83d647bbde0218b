// The shared bad-manifest vectors (tests/fixtures/bad-manifests.json, generated from
// runtime/manifest.py's schema): web/bundle.js refuses each with exactly the message Python gives.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";

import { validateManifest } from "../bundle.js";

const vectors = JSON.parse(await readFile(new URL("../../tests/fixtures/bad-manifests.json", import.meta.url), "utf-8"));

function apply(base, { path, value, delete: remove }) {
  const manifest = structuredClone(base);
  const keys = path.split(".");
  const last = keys.pop();
  const section = keys.reduce((object, key) => object[key], manifest);
  if (remove) delete section[last];
  else section[last] = value;
  return manifest;
}

test("the base manifest of the vectors is valid", () => {
  validateManifest(vectors.base, "model.json");
});

test("every bad manifest is refused with Python's message", () => {
  const wrong = [];
  for (const c of vectors.cases) {
    try {
      validateManifest(apply(vectors.base, c), "model.json");
      wrong.push(`${c.path}: accepted, expected ${c.message}`);
    } catch (e) {
      if (e.message !== c.message) wrong.push(`${c.path}: ${e.message} !== ${c.message}`);
    }
  }
  assert.deepEqual(wrong, []);
});
