"""The exact table set: every lookup table of integer-bundle lossless coding, built bit for bit.

docs/FORMAT.md §7.3 specifies every procedure here; this module is its reference
implementation. No platform transcendental function (libm exp/erfc, inv_cdf) decides a bit:
tables come from integers and correctly rounded IEEE-754 binary64 basic operations (+ - * /,
floor, exact scaling by powers of two; no FMA, a fixed order), so Python/numpy, JavaScript
(Number) and C (``-ffp-contract=off``) build identical tables. The per-symbol arithmetic that
uses them (:func:`renorm`, the posterior's :func:`posterior_cdf`) is integer-only, every
intermediate below 2**53 where JavaScript must be exact.

    exp2(k) * poly(r)       exp_exact(x): Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2,
                            then a degree-13 Taylor polynomial in Horner form
    PHI[k]                  Phi(k / 4096 - 8.5) * 2**28: Simpson integration of the density,
                            a sequential binary64 running sum, rounded to integers
    phi_lin(X)              PHI interpolated linearly at X / 2**20 + ... (X integer, 2**-20 units)
    quantile(j, L)          smallest X with phi_lin(X) >= j * 2**(28 - L): bucket edges and centres
    SIGMA_INV[l]            exp_exact(12 - l / 128) * 2**20, rounded: 1 / sigma on the logvar grid
    pixel_cdf, WEIGHT       the logistic component counts and mixture weights of the float set,
                            with exp_exact in place of np.exp
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

from edgevae.runtime.contract import (
    LATENT_INPUT_BITS,
    LATENT_INPUT_CLAMP,
    LOG_SCALE_RANGE,
    LOG_SCALE_STEPS,
    LOGIT_CLAMP,
    LOGIT_STEPS,
    LOGVAR_BITS,
    LOGVAR_RANGE,
    MEAN_SUBSTEPS,
    PIXEL_LEVELS,
    PIXEL_SCALE,
    POSTERIOR_MEAN_BITS,
)

# -- exp_exact ---------------------------------------------------------------------------------

#: binary64 constants, written so that Python's float() and JavaScript's Number() parse them to
#: the same double (both round decimal literals correctly). Hex in docs/FORMAT.md for C.
INV_LN2 = 1.4426950408889634  # 0x1.71547652b82fep+0
LN2_HI = 0.6931471803691238  # 0x1.62e42feep-1 (trailing 21 zero bits: k * LN2_HI is exact)
LN2_LO = 1.9082149292705877e-10  # 0x1.a39ef35793c76p-33
#: 1 / n! for n = 0 .. 13, each the binary64 nearest to it (Python: 1 / math.factorial(n)).
EXP_COEFFICIENTS = (
    1.0, 1.0, 0.5, 0.16666666666666666, 0.041666666666666664, 0.008333333333333333,
    0.001388888888888889, 0.0001984126984126984, 2.48015873015873e-05, 2.7557319223985893e-06,
    2.755731922398589e-07, 2.505210838544172e-08, 2.08767569878681e-09, 1.6059043836821613e-10,
)
#: Arguments of exp_exact stay within +-EXP_LIMIT (callers clamp), so 2**k is a normal double.
EXP_LIMIT = 64.0


def exp_exact(x: np.ndarray | float) -> np.ndarray:
    """e**x for binary64 x with |x| <= EXP_LIMIT, by a fixed sequence of binary64 basic operations
    (relative error < 2**-50; identical on every IEEE-754 machine)::

        k = floor(x * INV_LN2 + 0.5)
        r = (x - k * LN2_HI) - k * LN2_LO
        p = c13;  p = p * r + c12;  ...;  p = p * r + c0      (c_n = 1/n!, Horner, no FMA)
        result = p * 2**k                                      (exact scaling)
    """
    x = np.asarray(x, dtype=np.float64)
    if np.any(np.abs(x) > EXP_LIMIT):
        raise ValueError(f"exp_exact takes |x| <= {EXP_LIMIT}")
    out = np.empty(x.shape, dtype=np.float64)
    flat, into = x.reshape(-1), out.reshape(-1)
    # in blocks that stay in the cache through the polynomial's 30 passes (pixel_cdf: 2.1M values)
    for start in range(0, flat.size, EXP_BLOCK):
        _exp_block(flat[start : start + EXP_BLOCK], into[start : start + EXP_BLOCK])
    return out


#: Values per block of :func:`exp_exact`.
EXP_BLOCK = 1 << 14


def _exp_block(x: np.ndarray, out: np.ndarray) -> None:
    k = np.floor(x * INV_LN2 + 0.5)
    r = x - k * LN2_HI
    r -= k * LN2_LO
    p = np.full_like(r, EXP_COEFFICIENTS[-1])
    for c in EXP_COEFFICIENTS[-2::-1]:
        p *= r
        p += c
    np.ldexp(p, k.astype(np.int64), out=out)


# -- Phi ---------------------------------------------------------------------------------------

#: Phi is tabulated at x_k = k / 2**PHI_STEP_BITS - PHI_RANGE, k = 0 .. PHI_CELLS.
PHI_STEP_BITS = 12
PHI_RANGE = 8.5
PHI_CELLS = int(2 * PHI_RANGE) << PHI_STEP_BITS  # 69632
#: Table values are Phi * 2**PHI_BITS, rounded to integers.
PHI_BITS = 28
PHI_ONE = 1 << PHI_BITS
#: Positions on the standardized axis (edges, posterior distances) are integers in units of
#: 2**-POSITION_BITS; X = 0 is -PHI_RANGE.
POSITION_BITS = 20
SUBCELL_BITS = POSITION_BITS - PHI_STEP_BITS  # 8: positions per table cell, as a power of two
POSITION_ORIGIN = int(PHI_RANGE * (1 << POSITION_BITS))  # 8912896
POSITION_END = PHI_CELLS << SUBCELL_BITS  # 17825792: X of +PHI_RANGE
#: 1 / (6 * 4096 * sqrt(2 pi)): Simpson's h / 6 times the normal density's constant.
SIMPSON_SCALE = 1.6233002946021836e-05  # 0x1.1058377e2cee0p-16


@lru_cache(maxsize=1)
def phi_table() -> np.ndarray:
    """PHI int64 (PHI_CELLS + 1,): PHI[k] = floor(Phi(x_k) * 2**28 + 0.5), non-decreasing, 0 .. 2**28.

    Phi(x_0) = 0; cell j adds Simpson's rule over [x_j, x_j+1] of f(x) = exp_exact(-0.5 * (x * x)):
    s_j = (f(x_j) + 4 * f(x_j + 2**-13)) + f(x_j+1), summed left to right in binary64 (S_0 = 0,
    S_k+1 = S_k + s_k), then PHI[k] = floor(S_k * SIMPSON_SCALE * 2**28 + 0.5) (multiplied in that
    order). Every x, x * x and -0.5 * x * x here is exact.
    """
    k = np.arange(PHI_CELLS + 1, dtype=np.float64)
    x = (k - POSITION_ORIGIN / (1 << SUBCELL_BITS)) / (1 << PHI_STEP_BITS)
    f = exp_exact(-0.5 * (x * x))
    mid = x[:-1] + 1.0 / (1 << (PHI_STEP_BITS + 1))
    fm = exp_exact(-0.5 * (mid * mid))
    s = (f[:-1] + 4.0 * fm) + f[1:]
    total = np.concatenate([[0.0], np.add.accumulate(s)])  # sequential, left to right
    return np.floor(total * SIMPSON_SCALE * float(PHI_ONE) + 0.5).astype(np.int64)


def phi_lin(position: np.ndarray) -> np.ndarray:
    """Phi * 2**28 interpolated linearly at integer positions X (2**-20 units from -8.5), int64.

    X is clamped to [0, POSITION_END]; c = min(X >> 8, PHI_CELLS - 1), r = X - 256 c,
    value = PHI[c] + floor((PHI[c + 1] - PHI[c]) * r / 256): integers below 2**37.
    """
    x = np.clip(np.asarray(position), 0, POSITION_END).astype(np.int32)
    return _phi_lin32(x).astype(np.int64)


def _phi_lin32(x: np.ndarray) -> np.ndarray:
    """:func:`phi_lin` of positions already clamped to [0, POSITION_END], int32 in and out.

    int32 throughout (positions < 2**25, PHI < 2**29, increments * r < 2**23): a third of the time
    of int64. The cell c = X >> 8 runs to PHI_CELLS at X = POSITION_END, where the tables' extra
    entry (PHI[last], increment 0) gives PHI[last], as c = PHI_CELLS - 1, r = 256 does.
    """
    low, step = _phi_cells()
    c = x >> SUBCELL_BITS
    r = x & ((1 << SUBCELL_BITS) - 1)
    out = step.take(c)
    out *= r
    out >>= SUBCELL_BITS
    out += low.take(c)
    return out


@lru_cache(maxsize=1)
def _phi_cells() -> tuple[np.ndarray, np.ndarray]:
    """(PHI[c], PHI[c + 1] - PHI[c]) for c = 0 .. PHI_CELLS (the last increment 0), int32 each."""
    phi = phi_table().astype(np.int32)
    return phi, np.append(np.diff(phi), np.int32(0)).astype(np.int32)


def quantile(j: np.ndarray, levels_bits: int) -> np.ndarray:
    """The smallest position X (int64, 2**-20 units from -8.5) with phi_lin(X) >= j * 2**(28 - L),
    for integers 0 <= j <= 2**L (L = ``levels_bits`` <= 28): the quantile j / 2**L of the table.

    Any search that finds the smallest such X gives the same answer (phi_lin is non-decreasing);
    this one solves it per cell: the first cell c whose end reaches the target (PHI[c + 1] >= t),
    then the smallest r with PHI[c] + floor(D r / 256) >= t, D = PHI[c + 1] - PHI[c]:
    r = ceil(256 (t - PHI[c]) / D) (0 when PHI[c] >= t already), X = 256 c + r.
    """
    target = np.asarray(j, dtype=np.int64) << (PHI_BITS - levels_bits)
    phi = phi_table()
    c = np.minimum(np.searchsorted(phi[1:], target, side="left"), PHI_CELLS - 1)
    short = np.maximum(target - phi[c], 0)
    step = np.maximum(phi[c + 1] - phi[c], 1)  # D >= short >= 1 wherever short > 0
    x = (c << SUBCELL_BITS) + (-((-short << SUBCELL_BITS) // step))
    # a target beyond PHI[last] is never reached: the search's answer is the end
    return np.where(target > phi[-1], POSITION_END, np.minimum(x, POSITION_END))


def latent_index(position: np.ndarray) -> np.ndarray:
    """A position X (2**-20 units from -8.5) as the decoder's int32 latent index (2**-8 units),
    rounded half up: (X - POSITION_ORIGIN + 2**11) >> 12, clamped to +-LATENT_INPUT_CLAMP."""
    shift = POSITION_BITS - LATENT_INPUT_BITS
    z = (np.asarray(position, dtype=np.int64) - POSITION_ORIGIN + (1 << (shift - 1))) >> shift
    limit = LATENT_INPUT_CLAMP << LATENT_INPUT_BITS
    return np.clip(z, -limit, limit).astype(np.int32)


@lru_cache(maxsize=4)
def buckets(bucket_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges, centres, group centres) of 2**b buckets of equal prior mass.

    edges int64 (2**b - 1,): the interior edges E_i = quantile(i, b) - POSITION_ORIGIN, i = 1 ..
    2**b - 1, in 2**-20 units (edges 0 and 2**b are -inf and +inf); centres int32 (2**b,):
    latent_index(quantile(2 i + 1, b + 1)), the decoder's input for bucket i; group centres int32
    (2**(b // 2),): latent_index(quantile(2 g + 1, b // 2 + 1)).
    """
    n = 1 << bucket_bits
    edges = quantile(np.arange(1, n), bucket_bits) - POSITION_ORIGIN
    centres = latent_index(quantile(2 * np.arange(n) + 1, bucket_bits + 1))
    half = bucket_bits // 2
    groups = latent_index(quantile(2 * np.arange(1 << half) + 1, half + 1))
    return edges, centres, groups


@lru_cache(maxsize=4)
def edge_positions(bucket_bits: int) -> np.ndarray:
    """E_i for every edge index i = 0 .. 2**b, float64 (2**b + 1,): the interior edges of
    :func:`buckets`, and at the infinite ends (i = 0, 2**b) their neighbours' positions, which
    callers replace (posterior_cdf's ends are PHI[0] and PHI[last] whatever the position)."""
    edges = buckets(bucket_bits)[0].astype(np.float64)
    return np.concatenate([edges[:1], edges, edges[-1:]])


# -- the posterior's 1 / sigma ---------------------------------------------------------------------

#: 1 / sigma in units of 2**-SIGMA_BITS.
SIGMA_BITS = 20


@lru_cache(maxsize=1)
def sigma_inv() -> np.ndarray:
    """SIGMA_INV int64 (2049,): floor(exp_exact(12 - l / 128) * 2**20 + 0.5), l = logvar index
    (log-variance -24 + l / 64, so 1 / sigma = exp(12 - l / 128)); 19,290 .. 170,654,920,530 (< 2**38)."""
    lo, hi = LOGVAR_RANGE
    top = (hi - lo) << LOGVAR_BITS
    l = np.arange(top + 1, dtype=np.float64)
    return np.floor(exp_exact(-lo / 2 - l / (2 << LOGVAR_BITS)) * float(1 << SIGMA_BITS) + 0.5).astype(np.int64)


def posterior_cdf(edge_index: np.ndarray, mean_index: np.ndarray, logvar_index: np.ndarray,
                  edges: np.ndarray) -> np.ndarray:
    """F_i = Phi((e_i - mu) / sigma) * 2**28 (int64, (..., n)) at bucket edges i (..., n) for the
    posterior of each latent (...,): mean_index m (mu = m / 2**10), logvar index l.

    i = 0 gives PHI[0], i = 2**b gives PHI[last]; otherwise
    X = floor((E_i - m * 2**10) * SIGMA_INV[l] / 2**20) + POSITION_ORIGIN, and F = phi_lin(X) (which
    clamps X). The product is below 2**62 (int64 here); where it exceeds 2**53 X is clamped anyway,
    so binary64 arithmetic (JavaScript) gives the same F. Non-decreasing in i.
    """
    n_edges = len(edges) + 1  # 2**b
    i = np.asarray(edge_index, dtype=np.int64)
    inner = np.clip(i - 1, 0, len(edges) - 1)
    mu = (np.asarray(mean_index, dtype=np.int64) << (POSITION_BITS - POSTERIOR_MEAN_BITS))[..., None]
    s = sigma_inv()[np.asarray(logvar_index, dtype=np.int64)][..., None]
    x = (((edges[inner] - mu) * s) >> SIGMA_BITS) + POSITION_ORIGIN
    x = np.where(i <= 0, 0, np.where(i >= n_edges, POSITION_END, x))
    return phi_lin(x)


def posterior_positions(edges: np.ndarray, mean_index: np.ndarray, logvar_index: np.ndarray) -> np.ndarray:
    """The positions X of :func:`posterior_cdf` at interior edge positions E (``edges``, (n,) or
    (..., n) int64, 2**-20 units) for posteriors (...,), clamped to [0, POSITION_END]: int32 (..., n).

    The coder's fast form of the same integers: binary64 throughout (the argument of
    :func:`posterior_cdf`: exact where the product is below 2**53, clamped where it is not), with
    SIGMA_INV / 2**20 folded into one exact power-of-two scaling.
    """
    mu = np.asarray(mean_index).astype(np.float64) * float(1 << (POSITION_BITS - POSTERIOR_MEAN_BITS))
    scale = _sigma_inv_scaled()[np.asarray(logvar_index)]
    x = np.subtract(np.asarray(edges, dtype=np.float64), mu[..., None])
    x *= scale[..., None]
    np.floor(x, out=x)
    x += POSITION_ORIGIN
    np.clip(x, 0, POSITION_END, out=x)
    return x.astype(np.int32)


@lru_cache(maxsize=1)
def _sigma_inv_scaled() -> np.ndarray:
    """SIGMA_INV / 2**20 in binary64 (exact: a power-of-two scaling of integers below 2**38)."""
    return sigma_inv().astype(np.float64) / float(1 << SIGMA_BITS)


def posterior_table(x: np.ndarray) -> np.ndarray:
    """renorm of phi_lin at clamped positions X (..., n + 1) (:func:`posterior_positions`): a
    posterior stage's constriction floats (..., n)."""
    return renorm(_phi_lin32(x))


# -- pixel and weight tables ---------------------------------------------------------------------

#: constriction's precision: every table sums to 2**24 (as in bitsback).
TOTAL = 1 << 24
#: Unnormalized integer weight of a pixel's heaviest component.
WEIGHT_ONE = 1 << 30


@lru_cache(maxsize=1)
def pixel_cdf() -> np.ndarray:
    """G int32 (129, 32, 511): G[s, f, j] = the cumulative count of one logistic component at the
    upper edge of level j - 255 above its mean's integer part, scale index s, mean fraction f / 32.

        scale = exp_exact(-7 + s / 16) * 127.5
        t = ((j - 255) + 0.5 - f / 32) / scale
        u = min(max(-t, -64), 64)
        G = floor((1 / (1 + exp_exact(u))) * (2**24 - 256)), then a running maximum over j.
    """
    lo, hi = LOG_SCALE_RANGE
    s = np.arange((hi - lo) * LOG_SCALE_STEPS + 1, dtype=np.float64)
    scale = exp_exact(lo + s / LOG_SCALE_STEPS) * PIXEL_SCALE
    offset = np.arange(MEAN_SUBSTEPS, dtype=np.float64) / MEAN_SUBSTEPS
    edge = np.arange(-(PIXEL_LEVELS - 1), PIXEL_LEVELS, dtype=np.float64) + 0.5
    out = np.empty((len(scale), MEAN_SUBSTEPS, len(edge)), dtype=np.int32)
    for i, row in enumerate(scale):  # one scale at a time: 16k values that stay in the cache
        t = (edge[None, :] - offset[:, None]) / row
        u = np.minimum(np.maximum(-t, -EXP_LIMIT), EXP_LIMIT)
        cdf = 1.0 / (1.0 + exp_exact(u))
        counts = np.floor(cdf * float(TOTAL - PIXEL_LEVELS))
        out[i] = np.maximum.accumulate(counts, axis=1)
    return out


@lru_cache(maxsize=1)
def weight_table() -> np.ndarray:
    """WEIGHT int64 (513,): max(1, floor(exp_exact(-d / 16) * 2**30)), d = how many logit steps
    (1/16) a component lies below its pixel's largest logit (clamped to 512)."""
    d = np.arange(2 * LOGIT_CLAMP * LOGIT_STEPS // 2 + 1, dtype=np.float64)
    return np.maximum(np.floor(exp_exact(-d / LOGIT_STEPS) * float(WEIGHT_ONE)), 1).astype(np.int64)


# -- renormalisation -------------------------------------------------------------------------------

#: A row's total is shifted below 2**RENORM_BITS before rescaling, so total * 2**24 < 2**53.
RENORM_BITS = 29


def renorm(cumulative: np.ndarray, axis: int = -1) -> np.ndarray:
    """Non-decreasing integer cumulative values (..., n + 1) along ``axis``, each in [0, 2**53) ->
    constriction floats (..., n) (the table axis last, C order): ``mass - 1`` of integer masses
    >= 1 summing to 2**24. Integer-only:

        a_i = c_i - c_0; T = a_n
        if T == 0: a_i = i, T = n                           (a row without increments: uniform)
        s = the smallest shift >= 0 with T >> s < 2**29;  a_i = a_i >> s;  T = T >> s
        q_i = floor(a_i * (2**24 - n) / T)                  (a_i * (2**24 - n) < 2**53)
        mass_i - 1 = q_i+1 - q_i

    Computed in binary64, where every step is exact on these integers (faster than int64 in
    numpy): values below 2**53 and their differences are exact, a >> s is floor(a * 2**-s), and a
    correctly rounded quotient below 2**24 with T < 2**29 is never rounded up to the next integer,
    so the last floor is the integer one (tests/test_exact_tables.py and test_exact_speed.py check
    all of it against integer arithmetic). ``axis`` lets callers keep a short table axis (mixture
    components) outside, where numpy's loops run long.
    """
    c = np.moveaxis(np.asarray(cumulative), axis, -1)  # a view: the arithmetic below keeps memory order
    n = c.shape[-1] - 1
    a = c.astype(np.float64)
    if a[..., 0].any():  # running sums (categorical) start at 0 already: a pass saved
        a -= a[..., :1].copy()
    total = a[..., -1:].copy()
    empty = total <= 0
    if empty.any():
        a = np.where(empty, np.arange(n + 1, dtype=np.float64), a)
        total = np.where(empty, float(n), total)
    if (total >= (1 << RENORM_BITS)).any():
        # bit length by frexp (exact below 2**53); shift s is the scaling by 2**-s, then floor
        _, exponent = np.frexp(total)
        scale = np.ldexp(1.0, -np.maximum(exponent - RENORM_BITS, 0))
        a *= scale
        np.floor(a, out=a)
        total = a[..., -1:].copy()
    a *= float(TOTAL - n)
    a /= total
    np.floor(a, out=a)
    return differences(a, axis)


def differences(q: np.ndarray, axis: int) -> np.ndarray:
    """q_i+1 - q_i of integer values q (..., n + 1) (the table axis moved last from ``axis``) as
    float32 (..., n) in C order: constriction's table layout.

    A table axis that is not last in memory (mixture components) is written one entry at a
    time, each a long strided row; subtracting along it at once runs a loop of n per row.
    """
    n = q.shape[-1] - 1
    out = np.empty(q.shape[:-1] + (n,), dtype=np.float32)
    if axis in (-1, q.ndim - 1):
        np.subtract(q[..., 1:], q[..., :-1], out=out, casting="same_kind")
    else:
        for i in range(n):
            np.subtract(q[..., i + 1], q[..., i], out=out[..., i], casting="same_kind")
    return out


def cumulative(weights: np.ndarray, axis: int = -1) -> np.ndarray:
    """Running sums 0, w_0, w_0 + w_1, ... of integer weights along ``axis`` (n -> n + 1 entries),
    float64 (exact: every caller's sums are integers below 2**53).

    A Python loop over the (short: mixture components) axis: numpy's cumsum runs one tiny loop
    per row there, ten times slower.
    """
    w = np.moveaxis(np.asarray(weights), axis, 0)
    out = np.empty((w.shape[0] + 1,) + w.shape[1:], dtype=np.float64)
    out[0] = 0
    for i in range(w.shape[0]):
        np.add(out[i : i + 1], w[i : i + 1], out=out[i + 1 : i + 2])
    return np.moveaxis(out, 0, axis)


def categorical(weights: np.ndarray, axis: int = -1) -> np.ndarray:
    """Non-negative integer weights (..., n) along ``axis`` (sum below 2**53) -> constriction
    floats (..., n) (table axis last) by :func:`renorm` of their running sums."""
    return renorm(cumulative(weights, axis), axis)


# -- fingerprint -----------------------------------------------------------------------------------


def table_crcs(bucket_bits: int) -> dict[str, int]:
    """CRC-32 of each exact table in its canonical bytes (see :func:`fingerprint`), by name."""
    edges, centres, groups = buckets(bucket_bits)
    out = {}
    for name, array, dtype in _canonical(bucket_bits, edges, centres, groups):
        out[name] = zlib.crc32(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return out


def _canonical(bucket_bits: int, edges: np.ndarray, centres: np.ndarray, groups: np.ndarray) -> list[tuple[str, np.ndarray, str]]:
    return [("pixel_cdf", pixel_cdf(), "<i4"), ("weight", weight_table(), "<i4"),
            ("sigma_inv", sigma_inv(), "<i8"), ("phi", phi_table(), "<i4"),
            ("edges", edges, "<i4"), ("centres", centres, "<i4"), ("group_centres", groups, "<i4")]


@lru_cache(maxsize=4)
def fingerprint(bucket_bits: int) -> int:
    """The CRC-32 chained over every table of the set, in order: pixel_cdf (C order), WEIGHT
    (int32), SIGMA_INV (int64), PHI, edges, centres, group centres; little-endian, int32 unless stated."""
    edges, centres, groups = buckets(bucket_bits)
    crc = 0
    for _, array, dtype in _canonical(bucket_bits, edges, centres, groups):
        crc = zlib.crc32(np.ascontiguousarray(array, dtype=dtype).tobytes(), crc)
    return crc
