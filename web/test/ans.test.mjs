// web/ans.js against constriction's AnsCoder: web/test/ans-vectors.json (made by
// web/test/make_ans_vectors.py) replayed word for word, then decoded back.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { AnsCoder, AnsError, cumulativeOf } from "../ans.js";

const { cases } = JSON.parse(readFileSync(new URL("./ans-vectors.json", import.meta.url)));

function replay(c) {
  const coder = new AnsCoder(c.start.length ? Uint32Array.from(c.start) : undefined);
  const bits = [];
  for (const op of c.ops) {
    if (op[0] === "push") {
      const [, symbols, tables] = op;
      for (let i = symbols.length - 1; i >= 0; i--) coder.pushCumulative(symbols[i], cumulativeOf(tables[i]));
    } else if (op[0] === "pop") {
      const [, tables, expected] = op;
      const got = tables.map((t) => coder.popCumulative(cumulativeOf(t), 0, t.length));
      assert.deepEqual(got, expected);
    } else if (op[0] === "pushu") {
      const [, symbols, n] = op;
      for (let i = symbols.length - 1; i >= 0; i--) coder.pushUniform(symbols[i], n);
    } else {
      const [, count, n, expected] = op;
      const got = Array.from({ length: count }, () => coder.popUniform(n));
      assert.deepEqual(got, expected);
    }
    bits.push(coder.numValidBits());
  }
  return { coder, bits };
}

test("streams, pops and num_valid_bits are constriction's", () => {
  for (const c of cases) {
    const { coder, bits } = replay(c);
    assert.deepEqual(Array.from(coder.getCompressed()), c.words);
    assert.equal(coder.isEmpty(), c.empty);
    c.ops.forEach((op, i) => {
      if (op[op.length - 1] !== null) assert.equal(bits[i], op[op.length - 1]);
    });
  }
});

test("a coder built from get_compressed's words pops the pushed symbols back", () => {
  for (const c of cases) {
    const { coder } = replay(c);
    const back = new AnsCoder(coder.getCompressed());
    // Undo the ops in reverse: pushes are popped, pops are pushed back.
    for (const op of [...c.ops].reverse()) {
      if (op[0] === "push") {
        const got = op[2].map((t) => back.popCumulative(cumulativeOf(t), 0, t.length));
        assert.deepEqual(got, op[1]);
      } else if (op[0] === "pop") {
        for (let i = op[1].length - 1; i >= 0; i--) back.pushCumulative(op[2][i], cumulativeOf(op[1][i]));
      } else if (op[0] === "pushu") {
        assert.deepEqual(op[1].map(() => back.popUniform(op[2])), op[1]);
      } else {
        for (let i = op[1] - 1; i >= 0; i--) back.pushUniform(op[3][i], op[2]);
      }
    }
    assert.deepEqual(Array.from(back.getCompressed()), c.start);
  }
});

test("a stream ending in a zero word is refused; an empty one is empty", () => {
  assert.throws(() => new AnsCoder(Uint32Array.of(5, 0)), AnsError);
  assert.ok(new AnsCoder(new Uint32Array(0)).isEmpty());
  assert.equal(new AnsCoder().numValidBits(), 0);
  assert.deepEqual(Array.from(new AnsCoder().getCompressed()), []);
});
