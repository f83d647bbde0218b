"""Test vectors for web/ans.js, made with constriction's AnsCoder (the reference coder).

Run from the repository root:  .venv/bin/python web/test/make_ans_vectors.py
It writes web/test/ans-vectors.json; web/test/ans.test.mjs replays every case in JavaScript
and must reproduce each stream word for word, each popped symbol and each num_valid_bits.

A case is a start (no words, or words to build the coder from, as AnsCoder(words)) and a list of
operations run in order, the way bits-back coding mixes them:
  ["push", [symbols], [[masses]]]   encode_reverse of a batch (the last symbol is pushed first)
  ["pop", [[masses]]]               decode of a batch under these tables (first symbol first)
  ["pushu", [symbols], n]           encode_reverse under Uniform(n)
  ["popu", count, n]                decode `count` symbols under Uniform(n)
Every table is integer masses >= 1 summing to 2**24, given to Categorical(perfect=False) as the
float32 values mass - 1 (as runtime/bitsback.py does). After each operation the case records
num_valid_bits, and pops record what they decoded; at the end get_compressed and is_empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import constriction
import numpy as np

TOTAL = 1 << 24
OUT = Path(__file__).with_name("ans-vectors.json")


def masses(rng: np.random.Generator, n: int) -> list[int]:
    """Integer masses >= 1 summing to 2**24: flat, skewed or nearly certain."""
    kind = rng.integers(3)
    if kind == 0:
        w = rng.random(n)
    elif kind == 1:
        w = rng.random(n) ** 8
    else:
        w = np.full(n, 1e-9)
        w[rng.integers(n)] = 1.0
    spread = TOTAL - n
    cum = np.floor(np.concatenate([[0.0], np.cumsum(w)]) / w.sum() * spread)
    cum[-1] = spread
    m = np.diff(cum).astype(np.int64) + 1
    assert m.sum() == TOTAL and m.min() >= 1
    return [int(v) for v in m]


def floats(tables: list[list[int]]) -> np.ndarray:
    return np.array(tables, dtype=np.float32) - np.float32(1)


def run_case(rng: np.random.Generator, start: list[int], steps: int) -> dict:
    family = constriction.stream.model.Categorical(perfect=False)
    coder = constriction.stream.stack.AnsCoder(np.array(start, dtype=np.uint32)) if start else \
        constriction.stream.stack.AnsCoder()
    ops = []
    for _ in range(steps):
        kind = rng.choice(["push", "push", "pop", "pushu", "popu"])
        batch = int(rng.integers(1, 5))
        n = int(rng.choice([2, 3, 16, 17, 256, 5, 86]))
        if kind in ("push", "pop"):
            tables = [masses(rng, n) for _ in range(batch)]
            if kind == "push":
                symbols = [int(rng.integers(n)) for _ in range(batch)]
                coder.encode_reverse(np.array(symbols, dtype=np.int32), family, floats(tables))
                op = ["push", symbols, tables]
            else:
                got = coder.decode(family, floats(tables))
                op = ["pop", tables, [int(v) for v in got]]
        else:
            n = int(rng.choice([2, 3, 256, 1 << 8, 1 << 16, 1000, 1 << 24]))
            if kind == "pushu":
                symbols = [int(rng.integers(n)) for _ in range(batch)]
                coder.encode_reverse(np.array(symbols, dtype=np.int32), constriction.stream.model.Uniform(n))
                op = ["pushu", symbols, n]
            else:
                got = coder.decode(constriction.stream.model.Uniform(n), batch)
                op = ["popu", batch, n, [int(v) for v in got]]
        op.append(int(coder.num_valid_bits()))
        ops.append(op)
    words = coder.get_compressed()
    return {"start": start, "ops": ops, "words": [int(w) for w in words], "empty": bool(coder.is_empty())}


def main() -> None:
    rng = np.random.default_rng(21)
    cases = [
        run_case(rng, [], 60),
        run_case(rng, [], 200),
        run_case(rng, [7], 40),
        run_case(rng, [0xFFFFFFFF, 1], 40),
        run_case(rng, [int(w) for w in rng.integers(0, 1 << 32, 12, dtype=np.uint64)] + [0x80000000], 120),
    ]
    # A stack popped past its end and one emptied exactly.
    family = constriction.stream.model.Categorical(perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    table = masses(rng, 256)
    coder.encode_reverse(np.array([3, 200], dtype=np.int32), family, floats([table, table]))
    got = coder.decode(family, floats([table, table]))
    cases.append({"start": [], "ops": [["push", [3, 200], [table, table], 0], ["pop", [table, table], [int(v) for v in got], 0]],
                  "words": [int(w) for w in coder.get_compressed()], "empty": bool(coder.is_empty())})
    cases[-1]["ops"][0][-1] = None  # not recorded for this case
    cases[-1]["ops"][1][-1] = int(coder.num_valid_bits())
    OUT.write_text(json.dumps({"cases": cases}, separators=(",", ":")) + "\n")
    print(f"{OUT}: {len(cases)} cases, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
