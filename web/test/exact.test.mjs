// web/exact.js against the reference (runtime/exact.py): web/test/exact-vectors.json, made by
// web/test/make_exact_vectors.py. The exact table set must come out bit for bit.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as exact from "../exact.js";
import { Likelihood, binning } from "../bitsback.js";

const V = JSON.parse(readFileSync(new URL("./exact-vectors.json", import.meta.url)));
const f64 = (hex) => Buffer.from(hex, "hex").readDoubleLE(0);
const hex64 = (x) => {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(x);
  return b.toString("hex");
};

test("exp_exact is bit for bit the reference's", () => {
  for (const [x, y] of V.exp) assert.equal(hex64(exact.expExact(f64(x))), y, `exp_exact(${f64(x)})`);
});

test("every table of the set, and the fingerprint of every bucket precision", () => {
  for (const [b, fingerprint] of Object.entries(V.fingerprints)) assert.equal(exact.tables(Number(b)).fingerprint, fingerprint, `b = ${b}`);
  const T = exact.tables(16);
  for (const [i, v] of V.phi) assert.equal(T.phi[i], v);
  for (const [i, v] of V.edges) assert.equal(T.edges[i], v);
  for (const [i, v] of V.centres) assert.equal(T.centres[i], v);
  assert.deepEqual(Array.from(T.groupCentres), V.group_centres);
  for (const [i, v] of V.sigma_inv) assert.equal(T.sigmaInv[i], v);
  assert.deepEqual(Array.from(T.weight), V.weight);
  for (const [s, f, j, v] of V.pixel_cdf) assert.equal(T.padded[1 + (s * 32 + f) * 511 + j], v);
});

test("renormalised rows are the reference's integers", () => {
  for (const [raw, masses] of V.renorm) {
    const n = raw.length - 1;
    const cum = new Float64Array(n + 1);
    exact.fromCumulative(Float64Array.from(raw), n, cum);
    assert.equal(cum[0], 0);
    assert.equal(cum[n], 2 ** 24);
    assert.deepEqual(Array.from({ length: n }, (_, i) => cum[i + 1] - cum[i] - 1), masses);
  }
});

test("the posterior's cumulative at bucket edges", () => {
  const T = exact.tables(16);
  for (const [mean, logvar, index, cdf] of V.posterior) {
    const Q = new exact.Posterior(T, [mean], [logvar], 1);
    assert.deepEqual(index.map((i) => Q.cdf(0, i)), cdf);
  }
});

test("near-lossless reconstruction, integers only", () => {
  const T = exact.tables(16);
  const out = { logit: Int32Array.from(V.mixture.logit), mean: Int32Array.from(V.mixture.mean), logScale: Int32Array.from(V.mixture.log_scale) };
  const L = new Likelihood(T, out, 2, 784, 5, binning(0));
  for (const [k, symbols, pixels] of V.reconstruct) {
    const bins = binning(k);
    const got = [];
    for (let b = 0; b < 2; b++) {
      const s = symbols.slice(b * 784, (b + 1) * 784);
      got.push(...exact.reconstructFrom(L, b, s.map((j) => bins.starts[j]), s.map((j) => bins.ends[j]), k));
    }
    assert.deepEqual(got, pixels, `K = ${k}`);
  }
});
