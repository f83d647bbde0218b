// docs/FORMAT.md §7.8's worked examples of the exact table set, recomputed by web/ (exact.js,
// ans.js, bitsback.js): every `name = value` line of the tables, renorm, ans, pixel and posterior
// blocks. (The container block needs its machine class's stand-in bundle; tests/test_web.py
// decodes real containers instead.) $EDGEVAE_FORMAT_MD points at another copy of the document.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as exact from "../exact.js";
import { AnsCoder, cumulativeOf } from "../ans.js";
import { Likelihood, binning } from "../bitsback.js";

const text = readFileSync(process.env.EDGEVAE_FORMAT_MD ?? new URL("../../docs/FORMAT.md", import.meta.url), "utf-8");

/** The `name = value` lines of the block after `<!-- exact-example: NAME -->`, as [name, value] pairs. */
function block(name) {
  const at = text.indexOf(`<!-- exact-example: ${name} -->`);
  assert.ok(at >= 0, `FORMAT.md has no exact-example block '${name}'`);
  const body = text.slice(text.indexOf("```text", at) + 7, text.indexOf("```", text.indexOf("```text", at) + 7));
  return body.trim().split("\n").map((line) => {
    // "name: state" (the ANS walk) or "name = value" (the value never holds " = ", a name may)
    const colon = line.indexOf(": ");
    if (colon >= 0) return [line.slice(0, colon).trim(), line.slice(colon + 2).trim()];
    const eq = line.lastIndexOf(" = ");
    return [line.slice(0, eq).trim(), line.slice(eq + 3).trim()];
  });
}
const json = (v) => JSON.parse(v);
const masses = (cum) => Array.from({ length: cum.length - 1 }, (_, i) => cum[i + 1] - cum[i]);
const renorm = (raw) => {
  const cum = new Float64Array(raw.length);
  exact.fromCumulative(Float64Array.from(raw), raw.length - 1, cum);
  return masses(cum);
};
const T = exact.tables(16);

test("§7.8 the tables", () => {
  const crcOf = (name) => {
    // each table's own CRC (initial value 0), by the fingerprint's byte layout
    const tables = { G: T.padded.subarray(1, 1 + 129 * 32 * 511), WEIGHT: T.weight, PHI: T.phi, E: T.edges, centre: T.centres, group_centre: T.groupCentres };
    return exact.tableCrc(name === "SIGMA_INV" ? T.sigmaInv : tables[name], name === "SIGMA_INV" ? 8 : 4);
  };
  for (const [name, value] of block("tables")) {
    let m;
    let got;
    if ((m = name.match(/^exp_exact\((.*)\)$/))) got = exact.expExact(Number(m[1]));
    else if ((m = name.match(/^PHI\[(\d+)\]$/))) got = T.phi[Number(m[1])];
    else if ((m = name.match(/^phi_lin\((\d+)\)$/))) got = exact.phiLin(T.phi, Number(m[1]));
    else if ((m = name.match(/^SIGMA_INV\[(\d+)\]$/))) got = T.sigmaInv[Number(m[1])];
    else if ((m = name.match(/^WEIGHT\[(\d+)\]$/))) got = T.weight[Number(m[1])];
    else if ((m = name.match(/^G\[(\d+),(\d+),(\d+)\]$/))) got = T.padded[1 + (Number(m[1]) * 32 + Number(m[2])) * 511 + Number(m[3])];
    else if ((m = name.match(/^E\[(\d+)\]$/))) got = T.edges[Number(m[1]) - 1];
    else if ((m = name.match(/^centre\[(\d+)\]$/))) got = T.centres[Number(m[1])];
    else if ((m = name.match(/^group_centre\[(\d+)\]$/))) got = T.groupCentres[Number(m[1])];
    else if ((m = name.match(/^crc\((\w+)\)$/))) got = crcOf(m[1]);
    else if (name === "fingerprint") got = T.fingerprint;
    else assert.fail(`unknown line ${name}`);
    assert.equal(got, Number(value), name);
  }
});

test("§7.8 renormalisation", () => {
  for (const [name, value] of block("renorm")) {
    const m = name.match(/^(renorm|categorical)\((.*)\)$/);
    const input = json(m[2]);
    let got;
    if (m[1] === "renorm") got = renorm(input);
    else {
      got = new Array(input.length);
      exact.categorical(input, input.length, got);
    }
    assert.deepEqual(got, json(value), name);
  }
});

test("§7.8 the ANS coder, state by state", () => {
  const lines = new Map(block("ans"));
  const table = cumulativeOf([5033164, 1, 11744051]);
  const coder = new AnsCoder();
  const state = (c) => `x = ${BigInt(c.hi) * 16777216n + BigInt(c.lo)}, bulk = [${Array.from(c.words.subarray(0, c.size)).join(", ")}]`;
  const symbols = [2, 0, 1, 2, 2, 0];
  for (let i = symbols.length - 1; i >= 0; i--) {
    coder.pushCumulative(symbols[i], table);
    assert.equal(state(coder), lines.get(`after encoding symbol ${i} (${symbols[i]})`), `symbol ${i}`);
  }
  const latents = [200, 77];
  for (let i = latents.length - 1; i >= 0; i--) {
    coder.pushUniform(latents[i], 256);
    assert.equal(state(coder), lines.get(`after encoding latent ${i} (${latents[i]}) under Uniform(256)`));
  }
  const words = coder.getCompressed();
  assert.deepEqual(Array.from(words), json(lines.get("words")));
  const back = new AnsCoder(words);
  assert.equal(state(back), lines.get("reading"));
  for (let i = 0; i < 2; i++) {
    const q = back.quantile();
    const s = back.popUniform(256);
    assert.equal(`q = ${q}, symbol ${s}, ${state(back)}`, lines.get(`decoding latent ${i} under Uniform(256)`));
  }
  for (let i = 0; i < 6; i++) {
    const q = back.quantile();
    const s = back.popCumulative(table, 0, 3);
    assert.equal(`q = ${q}, symbol ${s}, ${state(back)}`, lines.get(`decoding symbol ${i}`));
  }
});

test("§7.8 one pixel", () => {
  const lines = new Map(block("pixel"));
  // K = 2 components of one pixel: [image][component][pixel] with one pixel
  const out = { logit: Int32Array.of(16, 0), mean: Int32Array.of(4000, 4100), logScale: Int32Array.of(64, 72) };
  const L = new Likelihood(T, out, 1, 1, 2, binning(0));
  assert.deepEqual(Array.from(L.weightMass), json(lines.get("weights")));
  for (const [k, v] of [[0, 125], [0, 126], [1, 125], [1, 126]]) assert.equal(L.cdf(L.first[k], v), Number(lines.get(`C_${k}(${v})`)));
  const joint = [0, 1].map((k) => L.weightMass[k] * (L.cdf(L.first[k], 126) - L.cdf(L.first[k], 125)));
  const posterior = new Array(2);
  exact.categorical(joint, 2, posterior);
  assert.deepEqual(posterior, json(lines.get("component posterior")));
  assert.equal(joint[1] > joint[0] ? 1 : 0, Number(lines.get("best")));
  const stage1 = [0];
  for (let g = 1; g < 16; g++) stage1.push(L.cdf(L.first[1], 16 * g));
  stage1.push(2 ** 24);
  assert.deepEqual(masses(stage1), json(lines.get("stage 1 (k = 1)")));
  assert.deepEqual(renorm(Array.from({ length: 17 }, (_, i) => L.cdf(L.first[1], 7 * 16 + i))), json(lines.get("stage 2 (k = 1, group 7)")));
});

test("§7.8 one latent dimension", () => {
  const lines = new Map(block("posterior"));
  const Q = new exact.Posterior(T, [512], [1536], 1);
  assert.equal(Q.cdf(0, 32768), Number(lines.get("F(32768)")));
  assert.equal(Q.cdf(0, 40960), Number(lines.get("F(40960)")));
  assert.equal(Q.modeGroups(0)[0], Number(lines.get("mode group")));
  const stage1 = new Float64Array(257);
  Q.groupTable(0, 0, stage1);
  assert.deepEqual(masses(stage1).slice(126, 131), json(lines.get("stage 1 groups 126..130")));
  const stage2 = new Float64Array(257);
  Q.withinTable(0, 0, 160, stage2);
  assert.deepEqual(masses(stage2).slice(0, 4), json(lines.get("stage 2 (group 160) places 0..3")));
  assert.equal(masses(stage2)[255], Number(lines.get("stage 2 (group 160) place 255")));
});
