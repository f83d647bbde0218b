// docs/FORMAT.md §3.5's worked examples, checked against the package (`node --test web/test/`).

import { test } from "node:test";
import assert from "node:assert/strict";
import { RangeEncoder, RangeDecoder, cumulative, interval, lookupIn } from "../rangecoder.js";
import { crc32, parse, encodeVarint, decodeVarint } from "../container.js";
import { readBundle } from "../bundle.js";
import { parseTables, decodePayloads, rint } from "../codec.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex");

test("toy table: cumulatives, states, sealed words and the one-byte payload", () => {
  const cum = cumulative([40960, 16384, 8192]);
  assert.deepEqual(Array.from(cum), [0, 10485759, 14680063, 16777216]);
  const encoder = new RangeEncoder();
  const states = [];
  for (const s of [0, 2, 1, 2]) {
    encoder.encode(...interval(cum, s));
    states.push([encoder.lower.toString(16).padStart(16, "0"), encoder.range.toString(16).padStart(16, "0")]);
  }
  assert.deepEqual(states, [
    ["0000000000000000", "9ffffeffff600001"], ["8bfffe7fff210001", "1400007fffdeffff"],
    ["987ffebbfe808002", "0500001fffc00000"], ["9cdffed2fda06003", "00a00008ffe01fff"],
  ]);
  assert.deepEqual(encoder.sealed(), [0x9cdffed3]);
  assert.equal(hex(encoder.shortestPayload()), "9d");
  const decoder = new RangeDecoder(Uint8Array.of(0x9d));
  assert.deepEqual([0, 1, 2, 3].map(() => decoder.decode(lookupIn(cum))), [0, 2, 1, 2]);
});

test("the real container of FORMAT.md §3.5, byte by byte", async () => {
  const bytes = Uint8Array.from(Buffer.from("ee100749f79dc554939e4637024924", "hex"));
  const bundle = await readBundle(new URL("../../exported/fashion-mnist-codec/", import.meta.url));
  assert.equal(hex(bundle.fingerprint), "705ada87a0de1dbb48f68fee3f24d4e700d6c1d365d825a9a072f7c14d31bdcf");
  const parsed = parse(bytes);
  assert.deepEqual([parsed.header.version, parsed.header.mode, parsed.header.quality, parsed.header.fingerprintPrefix, parsed.header.count],
    [1, 0, 0, 7, 1]);
  assert.equal(hex(parsed.payload(0)), "49f79dc554939e46");
  parsed.verify(bundle.fingerprint, [1, 28, 28]);
  const tables = parseTables(bundle.files.codec, 24);
  const table = tables.qualities[0];
  assert.deepEqual(table.decode(parsed.payload(0)), [1, 0, 0, 2, 2, 8, 2, 2, 2, 13, 1, 5, 0, 0, 1, 0, 5, 2, 0, 1, 12, 2, 3, 3]);
  assert.equal(decodePayloads(table, [parsed.payload(0)])[0], -0.568756103515625);
});

test("CRC-32 check value, varints and ties-to-even rounding", () => {
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assert.equal(crc32(new TextEncoder().encode("6789"), crc32(new TextEncoder().encode("12345"))), 0xcbf43926);
  assert.deepEqual(encodeVarint(300), [0xac, 0x02]);
  assert.deepEqual(decodeVarint(Uint8Array.of(0xac, 0x02), 0, 2, "x"), [300, 2]);
  assert.throws(() => decodeVarint(Uint8Array.of(0x80, 0x00), 0, 2, "count"), /over-long count/);
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, -2.5001].map(rint), [0, 2, 2, -0, -2, -2, 2, -3]);
});
