"""docs/FORMAT.md §7.8's worked examples are true: every ``name = value`` line of its example blocks
is recomputed here (from runtime/exact.py and runtime/bitsback.py, and the ANS walk-through from
§7.2's formulas, checked against constriction itself)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from edgevae.runtime import bitsback
from edgevae.runtime import exact as E
from edgevae.runtime.likelihood import MixtureIndices

FORMAT = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
BLOCK = re.compile(r"<!-- exact-example: (\w+) -->\s*```text\n(.*?)```", re.S)


def blocks() -> dict[str, list[tuple[str, str]]]:
    """Every example block of FORMAT.md by name: its (name, value) lines."""
    out = {}
    for name, body in BLOCK.findall(FORMAT.read_text()):
        lines = [line for line in body.splitlines() if line.strip()]
        out[name] = [tuple(part.strip() for part in line.rsplit(" = ", 1)) if " = " in line else (line, "")
                     for line in lines]
    return out


def masses(floats: np.ndarray) -> list[int]:
    return [int(v) + 1 for v in np.asarray(floats).ravel()]


def test_every_example_block_is_checked() -> None:
    assert set(blocks()) == {"tables", "renorm", "ans", "pixel", "posterior", "container"}


def _table_value(key: str) -> object:
    edges, centres, groups = E.buckets(16)
    crcs = E.table_crcs(16)
    names = {"G": "pixel_cdf", "WEIGHT": "weight", "SIGMA_INV": "sigma_inv", "PHI": "phi", "E": "edges",
             "centre": "centres", "group_centre": "group_centres"}
    if m := re.fullmatch(r"exp_exact\((.+)\)", key):
        return float(E.exp_exact(float(m.group(1))))
    if m := re.fullmatch(r"phi_lin\((\d+)\)", key):
        return int(E.phi_lin(np.array(int(m.group(1)))))
    if m := re.fullmatch(r"crc\((\w+)\)", key):
        return crcs[names[m.group(1)]]
    if key == "fingerprint":
        return E.fingerprint(16)
    m = re.fullmatch(r"(\w+)\[([\d,]+)\]", key)
    assert m, key
    index = tuple(int(i) for i in m.group(2).split(","))
    table = {"PHI": E.phi_table(), "SIGMA_INV": E.sigma_inv(), "WEIGHT": E.weight_table(), "G": E.pixel_cdf(),
             "centre": centres, "group_centre": groups}.get(m.group(1))
    if m.group(1) == "E":  # interior edges are numbered from 1
        return int(edges[index[0] - 1])
    return int(table[index])


def test_table_examples() -> None:
    for key, value in blocks()["tables"]:
        assert _table_value(key) == ast.literal_eval(value), key


def test_renorm_examples() -> None:
    for key, value in blocks()["renorm"]:
        m = re.fullmatch(r"(renorm|categorical)\((.*)\)", key)
        argument = np.array(ast.literal_eval(m.group(2)), dtype=np.int64)
        function = E.renorm if m.group(1) == "renorm" else E.categorical
        result = masses(function(argument))
        assert result == ast.literal_eval(value), key
        assert sum(result) == 1 << 24 and min(result) >= 1


def _ans_walk() -> list[str]:
    """§7.2's formulas on the example's symbols, written as the example's lines."""
    p = [5033164, 1, 11744051]
    c = [0, p[0], p[0] + p[1]]
    symbols, latents = [2, 0, 1, 2, 2, 0], [200, 77]
    x, bulk, out = 0, [], []

    def encode(mass: int, left: int) -> None:
        nonlocal x
        if (x >> 40) >= mass:
            bulk.append(x & 0xFFFFFFFF)
            x >>= 32
        x = ((x // mass) << 24) | (left + x % mass)

    for i in reversed(range(len(symbols))):  # encode_reverse: the last symbol first
        encode(p[symbols[i]], c[symbols[i]])
        out.append(f"after encoding symbol {i} ({symbols[i]}): x = {x}, bulk = {bulk}")
    for i in reversed(range(len(latents))):
        encode(1 << 16, latents[i] << 16)
        out.append(f"after encoding latent {i} ({latents[i]}) under Uniform(256): x = {x}, bulk = {bulk}")
    words = bulk + ([] if x == 0 else [x] if x < 1 << 32 else [x & 0xFFFFFFFF, x >> 32])
    out.append(f"words = {words}")
    stack = list(words)
    x = stack.pop()
    while x < 1 << 32 and stack:
        x = (x << 32) | stack.pop()
    out.append(f"reading: x = {x}, bulk = {stack}")

    def decode(ps: list[int], cs: list[int]) -> tuple[int, int]:
        nonlocal x
        q = x % (1 << 24)
        j = max(i for i in range(len(cs)) if cs[i] <= q)
        x = (x >> 24) * ps[j] + (q - cs[j])
        if x < 1 << 32 and stack:
            x = (x << 32) | stack.pop()
        return j, q

    for i in range(len(latents)):
        j, q = decode([1 << 16] * 256, [k << 16 for k in range(256)])
        out.append(f"decoding latent {i} under Uniform(256): q = {q}, symbol {j}, x = {x}, bulk = {stack}")
    for i in range(len(symbols)):
        j, q = decode(p, c)
        out.append(f"decoding symbol {i}: q = {q}, symbol {j}, x = {x}, bulk = {stack}")
    return out


def test_ans_example_follows_the_formulas() -> None:
    lines = [f"{key} = {value}" for key, value in blocks()["ans"]]
    assert lines == _ans_walk()


def test_ans_example_is_what_constriction_writes() -> None:
    constriction = pytest.importorskip("constriction")
    coder = constriction.stream.stack.AnsCoder()
    table = np.array([[5033164 - 1, 0, 11744051 - 1]] * 6, dtype=np.float32)
    coder.encode_reverse(np.array([2, 0, 1, 2, 2, 0], dtype=np.int32),
                         constriction.stream.model.Categorical(perfect=False), table)
    coder.encode_reverse(np.array([200, 77], dtype=np.int32), constriction.stream.model.Uniform(256))
    words = dict(blocks()["ans"])["words"]
    assert [int(w) for w in coder.get_compressed()] == ast.literal_eval(words)
    raw = coder.get_compressed().astype("<u4").tobytes()
    assert raw.rstrip(b"\0").hex(" ") == "92 af 4d f8 c1 6d c8 db 02"  # the bytes FORMAT.md shows


def test_pixel_example() -> None:
    a, u, s = np.array([16, 0]), np.array([4000, 4100]), np.array([64, 72])
    shape = (1, 2, 1, 1, 1)
    likelihood = bitsback._Likelihood(MixtureIndices(a.reshape(shape).astype(np.int32), u.reshape(shape).astype(np.int32),
                                                     s.reshape(shape).astype(np.int32)), bitsback.tables(16, True))
    G = E.pixel_cdf()

    def C(k: int, v: int) -> int:
        return int(G[s[k], u[k] % 32, v - 1 - u[k] // 32 + 255]) + v

    posterior, best = likelihood.component_posterior(np.array([[125]]))
    first = likelihood.chosen(np.array([[1]]))
    got = {"weights": masses(likelihood.weights[0, 0]), "C_0(125)": C(0, 125), "C_0(126)": C(0, 126),
           "C_1(125)": C(1, 125), "C_1(126)": C(1, 126), "component posterior": masses(posterior[0, 0]),
           "best": int(best[0, 0]), "stage 1 (k = 1)": masses(likelihood.groups(first)[0, 0]),
           "stage 2 (k = 1, group 7)": masses(likelihood.within(first, np.array([[7]]))[0, 0])}
    for key, value in blocks()["pixel"]:
        assert got[key] == ast.literal_eval(value), key


def test_posterior_example() -> None:
    t = bitsback.tables(16, True)
    posterior = bitsback._ExactPosterior(t, np.array([[512]]), np.array([[1536]]))
    groups = masses(posterior.groups()[0, 0])
    within = masses(posterior.within(np.array([[160]]))[0, 0])
    got = {"mode": int(posterior.mode[0, 0]), "mode group": int(posterior.mode[0, 0]) // t.fine,
           "stage 1 groups 126..130": groups[126:131], "stage 2 (group 160) places 0..3": within[:4],
           "stage 2 (group 160) place 255": within[255]}
    for i in (32768, 40960):
        got[f"F({i})"] = int(E.posterior_cdf(np.array([i]), np.array(512), np.array(1536), t.edges)[0])
    for key, value in blocks()["posterior"]:
        assert got[key] == ast.literal_eval(value), key


# -- a real one-image container (the shipped integer bundle, exported/fashion-mnist-exact) --------


def example_image() -> np.ndarray:
    """The example's image: 28 x 28, black, with a white square at rows and columns 8 .. 19."""
    image = np.zeros((1, 1, 28, 28), np.uint8)
    image[:, :, 8:20, 8:20] = 255
    return image


def container_example_lines(model) -> list[str]:
    """FORMAT.md's container example: the container, its parsed fields, and the first symbols a
    decoder pops, following §7.2 and §7.5 (tables from runtime/bitsback.py)."""
    import constriction

    from edgevae.runtime import container as fmt
    from edgevae.runtime.codec import LosslessCodec

    data = LosslessCodec(model).compress(example_image())
    header, pos = fmt.read_header(data)
    payload = data[pos:-4]
    parsed = bitsback.read_payload_header(payload, 1)
    t = bitsback.tables(parsed.bucket_bits, True)
    raw = payload[parsed.data_offset:]
    words = np.frombuffer(raw + b"\0" * (-len(raw) % 4), dtype="<u4").astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    family = constriction.stream.model.Categorical(perfect=False)
    z = coder.decode(constriction.stream.model.Uniform(t.buckets // t.fine), model.latent_dim)
    mix = model.likelihood_indices(t.group_centers[z][None])
    likelihood = bitsback._Likelihood(mix, t)
    k = coder.decode(family, likelihood.weights[0])
    first = likelihood.chosen(k[None])
    groups = likelihood.groups(first)
    group = coder.decode(family, groups[0])
    within = likelihood.within(first, group[None])
    place = coder.decode(family, within[0])
    return [
        f"container = {data.hex(' ')}",
        f"bytes = {len(data)}",
        f"version = {header.version}",
        f"mode = {header.mode}",
        f"fingerprint prefix = {header.fingerprint_prefix}",
        f"bucket bits = {parsed.bucket_bits}",
        f"chains = {parsed.chains}",
        f"pixel checksum = {parsed.checksum}",
        f"chain words = {[int(w) for w in words]}",
        f"latent groups z = {z.tolist()}",
        f"decoder input = {t.group_centers[z].tolist()}",
        f"pixel 0 logit indices = {mix.logit_index[0, :, 0, 0, 0].tolist()}",
        f"pixel 0 mean indices = {mix.mean_index[0, :, 0, 0, 0].tolist()}",
        f"pixel 0 log-scale indices = {mix.log_scale_index[0, :, 0, 0, 0].tolist()}",
        f"pixel 0 weights = {masses(likelihood.weights[0, 0])}",
        f"components k[0..7] = {k[:8].tolist()}",
        f"pixel 0 stage 1 = {masses(groups[0, 0])}",
        f"groups [0..7] = {group[:8].tolist()}",
        f"places [0..7] = {place[:8].tolist()}",
        f"empty after the pixels = {coder.is_empty()}",
    ]


#: The shipped integer bundle: its graphs compute with integers, so the example holds on every machine.
EXAMPLE_BUNDLE = Path(__file__).resolve().parents[1] / "exported" / "fashion-mnist-exact"


def test_container_example() -> None:
    from edgevae.runtime.model import load

    lines = [f"{key} = {value}" for key, value in blocks()["container"]]
    assert lines == container_example_lines(load(EXAMPLE_BUNDLE, threads=1))
