"""The coder's fast table paths compute the same integers as straightforward integer references
(docs/FORMAT.md §7.3-§7.4), on random and extreme inputs: renorm and categorical (binary64, any
axis), phi_lin (cell tables), the posterior's positions (binary64) and stages, and every pixel
stage of _Likelihood (strided window rows, loops over components), lossless and near-lossless."""

from __future__ import annotations

import numpy as np
import pytest

from edgevae.runtime import bitsback, contract
from edgevae.runtime import exact as E
from edgevae.runtime.likelihood import MixtureIndices

RNG = np.random.default_rng(21)


# -- integer references --------------------------------------------------------------------------


def ref_renorm(c: np.ndarray) -> np.ndarray:
    """§7.3.7 in Python integers, row by row: masses - 1 as float32."""
    c = np.asarray(c, dtype=object)
    out = np.empty(c.shape[:-1] + (c.shape[-1] - 1,), dtype=np.float32)
    for index in np.ndindex(c.shape[:-1]):
        row = [int(v) for v in c[index]]
        n = len(row) - 1
        a = [v - row[0] for v in row]
        total = a[-1]
        if total == 0:
            a, total = list(range(n + 1)), n
        shift = max(total.bit_length() - E.RENORM_BITS, 0)
        a, total = [v >> shift for v in a], total >> shift
        q = [v * (E.TOTAL - n) // total for v in a]
        out[index] = [q[i + 1] - q[i] for i in range(n)]
    return out


def ref_phi_lin(x: np.ndarray) -> np.ndarray:
    phi = E.phi_table()
    x = np.clip(np.asarray(x, dtype=np.int64), 0, E.POSITION_END)
    c = np.minimum(x >> E.SUBCELL_BITS, E.PHI_CELLS - 1)
    r = x - (c << E.SUBCELL_BITS)
    return phi[c] + (((phi[c + 1] - phi[c]) * r) >> E.SUBCELL_BITS)


def ref_pixel_cumulative(params: MixtureIndices, levels: np.ndarray, component: np.ndarray) -> np.ndarray:
    """C_k(v) of §7.4 straight from G, int64 (B, P, n), for the component k (B, P) of each pixel."""
    g = E.pixel_cdf()
    b, k_count = params.mean_index.shape[:2]
    take = lambda a: np.take_along_axis(a.reshape(b, k_count, -1), component[:, None].astype(np.int64), 1)[:, 0]
    u, s = take(params.mean_index).astype(np.int64), take(params.log_scale_index).astype(np.int64)
    v = levels.astype(np.int64)
    j = np.clip(v - 1 - (u // 32)[..., None] + 255, 0, 510)
    inner = g[s[..., None], (u % 32)[..., None], j].astype(np.int64) + v
    return np.where(v == 0, 0, np.where(v == 256, E.TOTAL, inner))


def random_indices(b: int, k: int, p: int, extreme: bool = False) -> MixtureIndices:
    def draw(name: str) -> np.ndarray:
        lo, hi = contract.index_range(name)
        if extreme:  # the ends of every range, and their neighbours
            values = np.array([lo, lo + 1, hi - 1, hi, (lo + hi) // 2])
            return RNG.choice(values, size=(b, k, 1, 1, p)).astype(np.int32)
        return RNG.integers(lo, hi + 1, size=(b, k, 1, 1, p)).astype(np.int32)
    return MixtureIndices(draw("mixture_logit_index"), draw("mixture_mean_index"), draw("mixture_log_scale_index"))


# -- renorm, categorical, phi_lin ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4, 16, 256])
def test_renorm_equals_integer_arithmetic(n: int) -> None:
    rows = []
    for top in (n, 2**24, 2**29 - 1, 2**29, 2**40, 2**53 - 1):
        c = np.sort(RNG.integers(0, top, size=(20, n + 1)), axis=-1)
        c[:3, -1] = c[:3, 0]  # rows without increments: uniform
        c[3:5] = c[3:5, :1]
        rows.append(c)
    c = np.concatenate(rows)
    assert np.array_equal(E.renorm(c), ref_renorm(c))


def test_renorm_and_categorical_along_another_axis() -> None:
    c = np.sort(RNG.integers(0, 2**50, size=(3, 7, 6)), axis=1)
    assert np.array_equal(E.renorm(c, axis=1), E.renorm(c.transpose(0, 2, 1)))
    w = RNG.integers(0, 2**30, size=(3, 5, 9))
    w[0, :, 0] = 0
    assert np.array_equal(E.categorical(w, axis=1), E.categorical(w.transpose(0, 2, 1)))
    assert np.array_equal(E.categorical(w.transpose(0, 2, 1)),
                          ref_renorm(np.concatenate([np.zeros((3, 9, 1), np.int64), np.cumsum(w.transpose(0, 2, 1), -1)], -1)))


def test_phi_lin_equals_the_int64_reference() -> None:
    x = np.concatenate([np.arange(-300, 3000), E.POSITION_END + np.arange(-3000, 300),
                        E.POSITION_ORIGIN + np.arange(-3000, 3000), RNG.integers(-2**40, 2**40, 10_000),
                        RNG.integers(0, E.POSITION_END + 1, 100_000)])
    assert np.array_equal(E.phi_lin(x), ref_phi_lin(x))


# -- the posterior -------------------------------------------------------------------------------


def test_posterior_positions_equal_int64_arithmetic() -> None:
    edges = E.buckets(16)[0]
    edges = np.concatenate([edges[:50], edges[-50:], RNG.choice(edges, 400)])
    lo_m, hi_m = contract.index_range("mean_index")
    lo_l, hi_l = contract.index_range("logvar_index")
    mean = np.concatenate([[lo_m, hi_m, 0, lo_m + 1, hi_m - 1], RNG.integers(lo_m, hi_m + 1, 200)])
    logvar = np.concatenate([[lo_l, hi_l, hi_l, lo_l, 1024], RNG.integers(lo_l, hi_l + 1, 200)])
    mean, logvar = np.meshgrid(mean, logvar[:40])
    x = E.posterior_positions(edges, mean, logvar)
    mu = (mean.astype(np.int64) << (E.POSITION_BITS - contract.POSTERIOR_MEAN_BITS))[..., None]
    want = (((edges - mu) * E.sigma_inv()[logvar][..., None]) >> E.SIGMA_BITS) + E.POSITION_ORIGIN
    assert np.array_equal(x, np.clip(want, 0, E.POSITION_END))


@pytest.mark.parametrize("bucket_bits", [6, 7, 16])
def test_posterior_stages_equal_renorm_of_posterior_cdf(bucket_bits: int) -> None:
    t = bitsback.tables(bucket_bits, True)
    lo_m, hi_m = contract.index_range("mean_index")
    lo_l, hi_l = contract.index_range("logvar_index")
    mean = np.concatenate([[lo_m, hi_m, 0, 0], RNG.integers(lo_m, hi_m + 1, 60)]).reshape(8, 8)
    logvar = np.concatenate([[lo_l, hi_l, lo_l, hi_l], RNG.integers(lo_l, hi_l + 1, 60)]).reshape(8, 8)
    posterior = bitsback._ExactPosterior(t, mean, logvar)
    index = np.arange(0, t.buckets + 1, t.fine)
    assert np.array_equal(posterior.groups(), ref_renorm(E.posterior_cdf(index, mean, logvar, t.edges)))
    group = RNG.integers(0, t.buckets // t.fine, size=mean.shape)
    group[0, :3] = [0, t.buckets // t.fine - 1, 0]
    index = group[..., None] * t.fine + np.arange(t.fine + 1)
    assert np.array_equal(posterior.within(group), ref_renorm(E.posterior_cdf(index, mean, logvar, t.edges)))


# -- the pixel stages ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_error", [0, 1, 4, 32])
@pytest.mark.parametrize("extreme", [False, True])
def test_pixel_stages_equal_the_integer_reference(max_error: int, extreme: bool) -> None:
    b, k, p = 3, 5, 300
    params = random_indices(b, k, p, extreme)
    bins = bitsback.binning(max_error)
    likelihood = bitsback._Likelihood(params, bitsback.tables(16, True), bins)
    steps = params.logit_index.reshape(b, k, p).astype(np.int64)
    drop = np.minimum(steps.max(axis=1, keepdims=True) - steps, 512)
    weights = E.weight_table()[drop].transpose(0, 2, 1)
    want = ref_renorm(np.concatenate([np.zeros((b, p, 1), np.int64), np.cumsum(weights, -1)], -1))
    assert np.array_equal(likelihood.weights, want)
    mass = want.astype(np.int64) + 1  # (B, P, K)

    symbols = RNG.integers(0, bins.bins, size=(b, p))
    symbols[:, :2] = [0, bins.bins - 1]
    posterior, best = likelihood.component_posterior(symbols)
    lo, hi = bins.starts[symbols], bins.ends[symbols]
    joint = np.stack([mass[..., c] * (ref_pixel_cumulative(params, np.stack([lo, hi + 1], -1),
                                                           np.full((b, p), c))[..., 1]
                                      - ref_pixel_cumulative(params, np.stack([lo, hi + 1], -1),
                                                             np.full((b, p), c))[..., 0]) for c in range(k)], -1)
    cum = np.concatenate([np.zeros((b, p, 1), np.int64), np.cumsum(joint, -1)], -1)
    assert np.array_equal(posterior, ref_renorm(cum))
    assert np.array_equal(best, joint.argmax(-1))

    component = RNG.integers(0, k, size=(b, p))
    first = likelihood.chosen(component)
    bounds = bins.edges[np.minimum(np.arange(bins.groups + 1) * bins.group, bins.bins)]
    c = ref_pixel_cumulative(params, np.broadcast_to(bounds, (b, p, len(bounds))), component)
    assert np.array_equal(likelihood.groups(first), np.diff(c, axis=-1).astype(np.float32) - 1)
    group = RNG.integers(0, bins.groups, size=(b, p))
    group[:, :2] = [0, bins.groups - 1]
    levels = bins.edges[np.minimum(group[..., None] * bins.group + np.arange(bins.group + 1), bins.bins)]
    assert np.array_equal(likelihood.within(first, group), ref_renorm(ref_pixel_cumulative(params, levels, component)))


def test_prediction_is_the_heaviest_components_mean() -> None:
    params = random_indices(2, 5, 400, extreme=True)
    likelihood = bitsback._Likelihood(params, bitsback.tables(16, True))
    steps, grid = params.logit_index.reshape(2, 5, -1), params.mean_index.reshape(2, 5, -1)
    heaviest = steps.argmax(axis=1)[:, None]
    assert np.array_equal(likelihood.prediction, (np.take_along_axis(grid, heaviest, 1)[:, 0] + 16) // 32)


def test_window_rows_equal_fancy_indexing() -> None:
    table = RNG.integers(0, 2**24, 5000).astype(np.int32)
    start = RNG.integers(0, 4000, size=(7, 9))
    for offsets in (np.arange(17), np.arange(1, 16) * 16, np.array([3]), np.array([0, 5, 9, 20])):
        assert np.array_equal(bitsback._rows(table, start, offsets), table[start[..., None] + offsets])


@pytest.mark.parametrize("max_error", [1, 4, 32])
@pytest.mark.parametrize("extreme", [False, True])
def test_exact_reconstruction_equals_the_integer_reference(max_error: int, extreme: bool) -> None:
    """§8.1 with M gathered level by level (bins repeat their end level past it), in int64."""
    b, k, p = 2, 5, 400
    params = random_indices(b, k, p, extreme)
    bins = bitsback.binning(max_error)
    symbols = RNG.integers(0, bins.bins, size=(b, p))
    symbols[:, :2] = [0, bins.bins - 1]
    lo, hi = bins.starts[symbols], bins.ends[symbols]
    likelihood = bitsback._Likelihood(params, bitsback.tables(16, True))
    mass = likelihood.weights.astype(np.int64) + 1  # (B, P, K)
    offsets = np.arange(2 * max_error + 2)
    levels = np.minimum(lo[..., None] + offsets, hi[..., None] + 1)
    mixture = sum(mass[..., c, None] * ref_pixel_cumulative(params, levels, np.full((b, p), c)) for c in range(k))
    m = np.diff(mixture >> bitsback.RECONSTRUCTION_SHIFT, axis=-1)
    den, num = m.sum(-1), (m * offsets[:-1]).sum(-1)
    value = np.where(den > 0, lo + (2 * num + den) // (2 * np.maximum(den, 1)), (lo + hi) // 2)
    end_mass = np.where(lo == 0, m[..., 0], np.take_along_axis(m, (hi - lo)[..., None], -1)[..., 0])
    at_end = (den > 0) & ((lo == 0) | (hi == 255)) & (2 * end_mass >= den)
    value = np.where(at_end, np.where(lo == 0, 0, 255), value)
    want = np.clip(value, np.maximum(hi - max_error, 0), np.minimum(lo + max_error, 255)).astype(np.uint8)
    assert np.array_equal(bitsback.exact_reconstruct(lo, hi, max_error, params), want)


def bisect_quantile(j: np.ndarray, levels_bits: int) -> np.ndarray:
    """The smallest X with phi_lin(X) >= j * 2**(28 - L), by bisection (the first implementation)."""
    target = np.asarray(j, dtype=np.int64) << (E.PHI_BITS - levels_bits)
    lo, hi = np.zeros(target.shape, np.int64), np.full(target.shape, E.POSITION_END, np.int64)
    while (lo < hi).any():
        mid = (lo + hi) >> 1
        ok = E.phi_lin(mid) >= target
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid + 1)
    return lo


@pytest.mark.parametrize("levels_bits", [1, 6, 7, 8, 9, 16, 17, 28])
def test_quantile_equals_bisection(levels_bits: int) -> None:
    j = np.arange(1 << min(levels_bits, 17) + 1)
    if levels_bits > 17:
        j = np.concatenate([j, RNG.integers(0, 1 << levels_bits, 100_000), (1 << levels_bits) - np.arange(100)])
    j = j[j <= 1 << levels_bits]
    assert np.array_equal(E.quantile(j, levels_bits), bisect_quantile(j, levels_bits))
