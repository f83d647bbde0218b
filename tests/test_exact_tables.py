"""The exact table set (runtime/exact.py, docs/FORMAT.md §7.3) is exactly what the spec says, on
every machine: hard-coded CRC-32s of every table catch any platform or library change, and a
scalar pure-Python transcription of the spec's text (no numpy, no libm) rebuilds the tables."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from edgevae.runtime import exact as E

#: CRC-32 of each table (16 bucket bits) in its canonical little-endian bytes (FORMAT.md §7.3.8).
#: A change here is a format change: every version-3 container would stop decoding.
CRCS = {"pixel_cdf": 1168033997, "weight": 2684104330, "sigma_inv": 2762052718, "phi": 4169268239,
        "edges": 3800298419, "centres": 2357705890, "group_centres": 356852205}
FINGERPRINT_16 = 690667079


def test_every_table_has_its_recorded_crc() -> None:
    assert E.table_crcs(16) == CRCS
    assert E.fingerprint(16) == FINGERPRINT_16


def test_tables_are_identical_when_rebuilt() -> None:
    before = {name: f() .copy() for name, f in (("G", E.pixel_cdf), ("PHI", E.phi_table), ("S", E.sigma_inv),
                                                ("W", E.weight_table))}
    for f in (E.pixel_cdf, E.phi_table, E.sigma_inv, E.weight_table, E.buckets, E.fingerprint):
        f.cache_clear()
    assert np.array_equal(before["G"], E.pixel_cdf()) and np.array_equal(before["PHI"], E.phi_table())
    assert np.array_equal(before["S"], E.sigma_inv()) and np.array_equal(before["W"], E.weight_table())
    assert E.table_crcs(16) == CRCS


# -- the spec, transcribed as scalar Python (binary64 floats, ints): what a port does -------------


def spec_exp(x: float) -> float:
    k = math.floor(x * E.INV_LN2 + 0.5)
    r = (x - k * E.LN2_HI) - k * E.LN2_LO
    p = E.EXP_COEFFICIENTS[13]
    for n in range(12, -1, -1):
        p = p * r + E.EXP_COEFFICIENTS[n]
    return math.ldexp(p, k)


def test_exp_is_the_spec_and_accurate() -> None:
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.uniform(-64, 64, 2000), np.arange(-64, 64.5, 0.5), [0.0, 1e-300, -1e-300]])
    ours = E.exp_exact(xs)
    for x, y in zip(xs, ours):
        assert spec_exp(float(x)) == float(y)
    assert np.max(np.abs(ours / np.exp(xs) - 1)) < 2.0**-50
    # the literals are what the spec's hex says (C ports use those)
    assert E.INV_LN2.hex() == "0x1.71547652b82fep+0" and E.LN2_HI.hex() == "0x1.62e42fee00000p-1"
    assert E.LN2_LO.hex() == "0x1.a39ef35793c76p-33" and E.SIMPSON_SCALE.hex() == "0x1.1058377e2cee0p-16"
    assert all(c == 1 / math.factorial(n) for n, c in enumerate(E.EXP_COEFFICIENTS))


def test_phi_is_the_spec() -> None:
    f = [spec_exp(-0.5 * (x * x)) for x in ((k - 34816) / 4096 for k in range(69633))]
    total, table = 0.0, [0]
    for j in range(69632):
        x = (j - 34816) / 4096
        m = x + 1 / 8192
        total = total + ((f[j] + 4 * spec_exp(-0.5 * (m * m))) + f[j + 1])
        table.append(math.floor((total * E.SIMPSON_SCALE) * 2.0**28 + 0.5))
    assert table == E.phi_table().tolist()
    assert table[0] == 0 and table[34816] == 1 << 27 and table[-1] == 1 << 28


def test_phi_is_close_to_the_normal_cdf() -> None:
    from statistics import NormalDist

    k = np.arange(0, 69633, 61)
    truth = np.array([NormalDist().cdf(v) for v in (k - 34816) / 4096]) * 2.0**28
    assert np.max(np.abs(E.phi_table()[k] - truth)) <= 1.0


def test_pixel_sigma_and_weight_tables_are_the_spec() -> None:
    G = E.pixel_cdf()
    rng = np.random.default_rng(1)
    for s, f in [(0, 0), (128, 31), (64, 16)] + [tuple(rng.integers([0, 0], [129, 32])) for _ in range(6)]:
        scale = spec_exp(-7 + s / 16) * 127.5
        row, best = [], 0
        for j in range(511):
            t = (((j - 255) + 0.5) - f / 32) / scale
            u = min(max(-t, -64.0), 64.0)
            best = max(best, math.floor((1 / (1 + spec_exp(u))) * 16776960))
            row.append(best)
        assert row == G[s, f].tolist(), (s, f)
    assert [math.floor(spec_exp(12 - l / 128) * 2.0**20 + 0.5) for l in range(2049)] == E.sigma_inv().tolist()
    assert [max(1, math.floor(spec_exp(-d / 16) * 2.0**30)) for d in range(513)] == E.weight_table().tolist()


def spec_phi_lin(X: int) -> int:
    table = E.phi_table()
    X = min(max(X, 0), 17825792)
    c = min(X >> 8, 69631)
    r = X - 256 * c
    return int(table[c]) + (int(table[c + 1] - table[c]) * r) // 256


def test_buckets_are_the_smallest_positions_reaching_their_quantile() -> None:
    edges, centres, groups = E.buckets(16)
    rng = np.random.default_rng(2)
    for i in [1, 2, 32767, 32768, 65535] + rng.integers(1, 65536, 20).tolist():
        X = int(edges[i - 1]) + 8912896
        target = i << (28 - 16)
        assert spec_phi_lin(X) >= target > spec_phi_lin(X - 1), i
    for i in [0, 1, 32768, 65535] + rng.integers(0, 65536, 10).tolist():
        X = int(E.quantile(np.array(2 * i + 1), 17))
        assert spec_phi_lin(X) >= (2 * i + 1) << 11 > spec_phi_lin(X - 1)
        assert centres[i] == (X - 8912896 + 2048) >> 12
    assert np.all(np.diff(edges) > 0) and np.all(np.diff(centres) >= 0) and np.all(np.diff(groups) >= 0)
    # the edges are the prior's quantiles to ~1e-5 (the decoder sees 1/256 steps)
    from statistics import NormalDist
    for i in (1, 1000, 32768, 60000):
        assert abs(edges[i - 1] / 2**20 - NormalDist().inv_cdf(i / 65536)) < 2e-5


@pytest.mark.parametrize("bits", [6, 7, 10, 16])
def test_every_bucket_precision_builds(bits: int) -> None:
    edges, centres, groups = E.buckets(bits)
    assert len(edges) == (1 << bits) - 1 and len(centres) == 1 << bits and len(groups) == 1 << (bits // 2)
    assert np.all(np.abs(centres) <= 2048)


def spec_renorm(c: list[int]) -> list[int]:
    n = len(c) - 1
    a = [v - c[0] for v in c]
    T = a[n]
    if T == 0:
        a, T = list(range(n + 1)), n
    sh = 0
    while T >> sh >= 1 << 29:
        sh += 1
    a, T = [v >> sh for v in a], T >> sh
    q = [(v * ((1 << 24) - n)) // T for v in a]
    return [q[j + 1] - q[j] + 1 for j in range(n)]


def test_renorm_is_the_spec_and_fits_javascript() -> None:
    rng = np.random.default_rng(3)
    for n in (2, 3, 16, 256):
        for scale in (1, 1 << 10, 1 << 24, 1 << 40, 1 << 48):
            steps = rng.integers(0, scale, size=(4, n)) * (rng.random((4, n)) < 0.7)
            c = np.concatenate([np.zeros((4, 1), np.int64), np.cumsum(steps, axis=1)], axis=1) + rng.integers(0, 99)
            ours = E.renorm(c)
            for row, got in zip(c, ours):
                want = spec_renorm(row.tolist())
                assert [int(v) + 1 for v in got] == want and sum(want) == 1 << 24 and min(want) >= 1
                # JavaScript: the product is an exact integer < 2**53 and floor(a / b) is exact there
                shifted = [(v - int(row[0])) >> max(0, (int(row[-1] - row[0]).bit_length() - 29)) for v in row.tolist()]
                assert max(shifted) * ((1 << 24) - n) < 2**53


def test_posterior_cdf_fits_javascript() -> None:
    """Where (E - m 2**10) * SIGMA_INV is not exact in binary64 the position is clamped anyway."""
    edges, _, _ = E.buckets(16)
    S = E.sigma_inv()
    for m in (-8192, 0, 8192):
        d = (edges - m * 1024).astype(np.int64)
        for l in (0, 700, 1536, 2048):
            exact = (d * int(S[l])) >> 20
            as_double = np.floor((d.astype(np.float64) * float(S[l])) / 1048576.0).astype(np.int64)
            clamp = lambda x: np.clip(x + 8912896, 0, 17825792)  # noqa: E731
            assert np.array_equal(clamp(exact), clamp(as_double)), (m, l)


def test_canonical_bytes_are_little_endian() -> None:
    assert zlib.crc32(np.ascontiguousarray(E.sigma_inv(), dtype="<i8").tobytes()) == CRCS["sigma_inv"]
    assert zlib.crc32(np.ascontiguousarray(E.phi_table(), dtype="<i4").tobytes()) == CRCS["phi"]


def test_the_coders_posterior_tables_are_posterior_cdf() -> None:
    """bitsback's fast posterior stages equal renorm of exact.posterior_cdf (the spec's F) at the edges."""
    from edgevae.runtime import bitsback

    t = bitsback.tables(16, True)
    rng = np.random.default_rng(4)
    mean = rng.integers(-8192, 8193, (3, 32))
    logvar = rng.integers(0, 2049, (3, 32))
    mean[0, :4], logvar[0, :4] = [-8192, 8192, 0, 512], [0, 2048, 1536, 700]
    posterior = bitsback._ExactPosterior(t, mean, logvar)
    index = np.broadcast_to(np.arange(0, 65537, 256), (3, 32, 257))
    assert np.array_equal(posterior.groups(), E.renorm(E.posterior_cdf(index, mean, logvar, t.edges)))
    group = rng.integers(0, 256, (3, 32))
    group[0, :3] = [0, 255, 128]
    index = group[..., None] * 256 + np.arange(257)
    assert np.array_equal(posterior.within(group), E.renorm(E.posterior_cdf(index, mean, logvar, t.edges)))
