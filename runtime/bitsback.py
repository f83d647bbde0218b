"""Lossless compression by bits-back coding with the VAE (BB-ANS, Townsend et al. 2019).

The cost of an image approaches the model's negative ELBO: the latent is *decoded* from the
message under the posterior (taking bits off the stack), so the bits spent on it come back.
Per image x, on a constriction ANS stack (last in, first out)::

    compress                                       decompress (exact reverse)
    pop   z ~ Q(z|x)      latent buckets           pop   z under the prior (uniform buckets)
    pop   k ~ Q(k|x,z)    mixture component/pixel  pop   k under the mixture weights
    push  x | z, k        256 levels per pixel     pop   x | z, k
    push  k | z           mixture weights          push  k under Q(k|x,z)    (x is known now)
    push  z               uniform prior buckets    push  z under Q(z|x)      (encoder on x)

The mixture component k of every pixel is a discrete latent of the decoder's discretized
logistic mixture and is coded by bits back too, so a pixel needs the table of one logistic
only, read from a precomputed integer lookup table instead of five sigmoids per level. In
expectation a pixel still costs -log2 of its mixture probability.

Two-stage symbols: a pixel level v is coded as its group v // 16 (16 groups), then v mod 16
within the group, and a latent bucket i as i // 2**(b - b//2), then the rest: the same
distribution, but every table has 16 (or 256) entries instead of 256 (or 65536), so tables are
cheap to build and constriction searches short rows. Both stages come from one integer
cumulative table, so a level or bucket never has zero probability.

Latents: each dimension is cut into ``2**bucket_bits`` buckets of equal mass under the N(0, 1)
prior (as craystack does), so the prior is uniform over buckets; the decoder network sees the
bucket's prior median. The posterior over buckets is Q(i) = Phi((e_{i+1} - mu) / sigma) -
Phi((e_i - mu) / sigma), coded at 24-bit precision (the prior's 16 bits are the coarse grid,
the posterior's 24 the fine one). Every table holds integers >= 1 summing to exactly 2**24,
handed to constriction's ``Categorical(perfect=False)`` as the floats ``mass - 1``: integers
below 2**24 are exact in float32, and its fast quantization ``floor(cumulative * (2**24 - n) /
(2**24 - n)) + index`` is then the identity, so constriction codes exactly our tables.

Chains and initial bits: a container's images are dealt round-robin into up to ``MAX_CHAINS``
independent chains (image i goes to chain i mod C), each an ANS stack of its own; the chains
are split into ``LANES`` lanes (chain c in lane c mod LANES) that run in parallel threads, and
within a lane steps run in lock-step, so every network call is a batch of the lane's chains, in
both directions. The first image of a chain has no bits to borrow: it is coded without bits
back, nothing is popped: its latent is only the coarse group (b // 2 bits per dimension under
the uniform prior) of its posterior mean, decoded at the group's prior median, and each pixel
takes its most probable mixture component. That costs about the bits-back credit of one image
(~D * b / 2 bits) per chain: the *gross* rate includes it, the *net* rate is that of the other
images.

Speed: the two lanes keep two cores busy (onnxruntime and numpy release the GIL; constriction's
calls hold it, under a tenth of the time), so load the model with ``threads=1``; more onnxruntime
threads per call only compete with the other lane (the CLI does this for --lossless unless
--threads is given). The networks take about half the time; the tables are built with long
numpy rows (components as an outer axis, window views of the lookup table, binary64 where it is
exact), since numpy's per-row overhead on axes of 5 or 17 entries costs more than the arithmetic.

Determinism (the decoder must rebuild every table bit for bit): compress and decompress run
the same computations on the same arrays: each network call batches exactly the images of one
lane's step (a function of the image count only, never of a user's batch size or the thread
count), and the network outputs are rounded to fixed-point grids before any table exists.
Pixel, weight and component tables are then pure integer arithmetic on grid indices and
integer lookup tables; the latent posterior uses IEEE basic float32/float64 operations on grid
values and a lookup table of Phi (no transcendental function of data). On one machine and
software stack (same edgevae, bundle, onnxruntime, numpy) decoding is therefore exact across
thread counts and batch sizes (onnxruntime's CPU kernels give bit-identical outputs for any
batch there; tested). Another CPU (other SIMD paths) or onnxruntime build may compute the
networks' outputs differently in their last bits; an output that then crosses a grid boundary
changes a table, and decoding diverges. That cannot yield silent wrong pixels: the payload
stores a CRC-32 of the pixels (seeded with a fingerprint of the lookup tables) and every chain
must end exactly empty, so a mismatch is a ContainerError.

Integer bundles (model.json ``"arithmetic": "integer"``) code with the *exact table set*
(runtime/exact.py; docs/FORMAT.md §7.3-§7.4; container version 3): their graphs return the grid
indices themselves, identical on every engine, and every table is built from them by integer
arithmetic and specified binary64 operations, so any machine and any implementation (web/)
rebuilds the same tables, whatever the batching. Everything above about float outputs applies to
float bundles (the float table set, versions 1 and 2), which keep their tables bit for bit.

Payload layout (inside a lossless ``.evz`` container, which adds its own header and CRC)::

    u8        latent bucket bits b (LATENT_BUCKET_BITS; MIN_BUCKET_BITS..MAX_BUCKET_BITS accepted)
    varint    chain count C = chain_count(N): clamp(N // MIN_CHAIN_IMAGES, 1, MAX_CHAINS), 0 for N = 0
              (near-lossless: N // NEAR_LOSSLESS_CHAIN_IMAGES)
    u32 LE    CRC-32 of the pixels (uint8, image after image, C-H-W order), seeded with
              the CRC-32 of the lookup-table fingerprint
    varint    words of chains 0 .. C-2, one each (LEB128)
    ...       the chains' 32-bit ANS words, little-endian, chain after chain; the last chain
              runs to the end, with the zero high bytes of its top word dropped
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgevae.runtime.container import (
    MAX_ERROR,
    MAX_LOSSLESS_IMAGES_PER_BYTE,
    MAX_NEAR_LOSSLESS_IMAGES_PER_BYTE,
    decode_varint,
    encode_varint,
)
from edgevae.runtime import contract, exact
from edgevae.runtime.contract import MIN_LOG_SCALE, PIXEL_LEVELS, PIXEL_SCALE
from edgevae.runtime.errors import ContainerError, InputError
from edgevae.runtime.likelihood import MixtureIndices, MixtureParams

if TYPE_CHECKING:
    from edgevae.runtime.model import EdgeVAE

# -- format constants ------------------------------------------------------------------------

#: constriction's AnsCoder / Categorical fixed-point precision: every table sums to 2**24.
PRECISION = 24
TOTAL = 1 << PRECISION

#: Buckets of equal prior mass per latent dimension, as a power of two (written in the payload).
#: Fine buckets matter: the narrowest posteriors have sigma ~0.007, and the bits-back credit is
#: lost where buckets are not much narrower than that (net/ELBO 1.012 at 10 bits, 1.006 at 12,
#: 1.002 at 16 on the shipped model).
LATENT_BUCKET_BITS = 16
#: Bucket precisions a decoder accepts.
MIN_BUCKET_BITS, MAX_BUCKET_BITS = 6, 16

#: Most chains per container.
MAX_CHAINS = 64
#: Images per chain below which fewer chains are used (each chain pays its own initial bits).
MIN_CHAIN_IMAGES = 32
#: The same for near-lossless payloads. Their images are cheaper than a lossless one, so a
#: chain's first image leaves fewer bits on the stack than the next one pops (latent and
#: components): the next few images of every chain pay for part of their bits back, ~190 bytes
#: per chain at K = 32. Measured on 1,000 test images, bytes per image at 32 / 64 / 128 / 256
#: images per chain: K = 32 70.5 / 67.0 / 66.5 / 64.6, K = 8 126.6 / 126.0 / 125.8 / 124.9,
#: K = 1 241.9 / 241.1 / 240.7 / 240.6, at the same speed once there are 2 chains (2 lanes).
NEAR_LOSSLESS_CHAIN_IMAGES = 256
#: Lanes of chains run in parallel; part of the format because it fixes the network batches.
LANES = 2

#: Posterior means are rounded to multiples of 2**-POSTERIOR_MEAN_BITS and clamped to +-this.
POSTERIOR_MEAN_BITS = 10
POSTERIOR_MEAN_CLAMP = 8.0
#: Posterior log-variances are rounded to multiples of 2**-LOGVAR_BITS within this range.
LOGVAR_BITS = 6
LOGVAR_RANGE = (-24.0, 8.0)
#: Phi is tabulated at multiples of 2**-PHI_BITS within +-PHI_RANGE (beyond: the end values) and
#: interpolated linearly in between (error < 2e-9).
PHI_BITS = 12
PHI_RANGE = 8.5

#: Mixture means are rounded to 1/MEAN_SUBSTEPS of a pixel level.
MEAN_SUBSTEPS = 32
#: log2 of MEAN_SUBSTEPS (a power of two, so mean level and fraction are a shift and a mask).
_MEAN_SUBSTEP_BITS = MEAN_SUBSTEPS.bit_length() - 1
#: Mixture log-scales (normalized domain) are rounded to 1/LOG_SCALE_STEPS within this range;
#: the lower end is the training clamp (likelihood.MIN_LOG_SCALE).
LOG_SCALE_STEPS = 16
LOG_SCALE_RANGE = (MIN_LOG_SCALE, 1.0)
#: Mixture logits are rounded to 1/LOGIT_STEPS; logits more than LOGIT_RANGE below the largest
#: of their pixel get the smallest weight.
LOGIT_STEPS = 16
LOGIT_RANGE = 32.0
#: Unnormalized integer weight of the largest component of a pixel.
WEIGHT_ONE = 1 << 30

#: Pixel levels of an 8-bit image (the contract's pixel domain: v sits at v / PIXEL_SCALE - 1).
LEVELS = PIXEL_LEVELS
#: Levels per coarse group of the two-stage pixel code (lossless: sqrt(LEVELS); see Binning.group).
PIXEL_GROUP = 16
#: Largest maximum error of a near-lossless binning: the container's (at most 64 keeps at least 3
#: bins, so both stages of the two-stage code have at least 2 symbols).
MAX_BIN_ERROR = MAX_ERROR

Progress = Callable[[int], None]


# -- bins: what is coded of a pixel -----------------------------------------------------------


@dataclass(frozen=True)
class Binning:
    """Runs of pixel levels ("bins") coded as one symbol; decoding knows only the bin.

    ``max_error`` 0 is lossless coding (every level its own bin). For K >= 1 (near-lossless):
    the first bin is [0, K], the last [255 - K, 255], and bins of 2K + 1 levels fill the rest
    from K + 1 up, the one before the last possibly narrower. Every bin has at most 2K + 1
    levels, so one value lies within K of all its levels (the guarantee of near-lossless
    decoding), and the extreme levels 0 and 255 lie in bins that can decode to exactly them
    (black and white backgrounds stay exact). The layout is a function of K only: the decoder
    rebuilds it from the K a container stores.

    A bin is coded in two stages like a level: its group (bin // group) then its place in the
    group, with ``group`` = ceil(sqrt(bins)) (16 for the 256 levels of lossless coding).
    """

    max_error: int
    starts: np.ndarray  # int64 (bins,): first level of each bin
    ends: np.ndarray  # int64 (bins,): last level of each bin
    edges: np.ndarray  # int64 (bins + 1,): starts, then LEVELS
    of_level: np.ndarray  # int64 (LEVELS,): the bin of each level
    #: uint8 (bins,): the image the posterior sees in place of a pixel of this bin (0 and 255 for
    #: the end bins, the middle level otherwise): computable by the decoder from bins alone.
    representative: np.ndarray
    group: int
    #: Images per chain below which a payload uses fewer chains (chain_count).
    chain_images: int

    @property
    def bins(self) -> int:
        """Symbols per pixel."""
        return len(self.starts)

    @property
    def groups(self) -> int:
        """Coarse groups of the two-stage code."""
        return -(-self.bins // self.group)

    @property
    def lossless(self) -> bool:
        """True for max_error 0: bins are levels."""
        return self.max_error == 0

    @property
    def max_images_per_byte(self) -> int:
        """Most images a payload may claim per byte (the container's bound, defined there):
        bounds memory and work before decoding."""
        return MAX_LOSSLESS_IMAGES_PER_BYTE if self.lossless else MAX_NEAR_LOSSLESS_IMAGES_PER_BYTE


@lru_cache(maxsize=None)
def binning(max_error: int = 0) -> Binning:
    """The bins of ``max_error`` (0 = lossless, 1 .. MAX_BIN_ERROR); ValueError otherwise."""
    if isinstance(max_error, bool) or not isinstance(max_error, (int, np.integer)) or not 0 <= max_error <= MAX_BIN_ERROR:
        raise ValueError(f"max error must be an integer in 0..{MAX_BIN_ERROR}, got {max_error!r}")
    k = int(max_error)
    starts = [0] + list(range(k + 1, LEVELS - 1 - k, 2 * k + 1)) + [LEVELS - 1 - k]
    if k == 0:
        starts = list(range(LEVELS))
    edges = np.array(starts + [LEVELS], dtype=np.int64)
    starts_a, ends = edges[:-1], edges[1:] - 1
    of_level = np.repeat(np.arange(len(starts_a)), np.diff(edges))
    representative = np.where(starts_a == 0, 0, np.where(ends == LEVELS - 1, LEVELS - 1, (starts_a + ends) // 2))
    if k == 0:
        representative = starts_a
    group = math.isqrt(len(starts_a) - 1) + 1
    return Binning(k, starts_a, ends, edges, of_level, representative.astype(np.uint8), group,
                   MIN_CHAIN_IMAGES if k == 0 else NEAR_LOSSLESS_CHAIN_IMAGES)


# -- lookup tables (built once per process, identical on every run) ---------------------------


@dataclass(frozen=True)
class Tables:
    """Lookup tables and latent buckets for one bucket precision.

    ``pixel_cdf[s, f, j]`` = floor(sigmoid(((j - 255) + 0.5 - f / MEAN_SUBSTEPS) / scale_s) *
    (2**24 - 256)): the cumulative count of one logistic component at the upper edge of the
    level j - 255 above its mean's integer part. ``phi[i]`` = Phi(i / 2**PHI_BITS - PHI_RANGE),
    interpolated linearly in between. ``edges``: the prior quantiles i / 2**b, i = 0 .. 2**b
    (-inf and +inf at the ends); ``centers``: the quantiles (i + 0.5) / 2**b, the latents the
    decoder network sees; ``group_centers``: the same for the 2**(b//2) coarse groups (the
    latents of a chain's first image).
    """

    bucket_bits: int
    pixel_cdf: np.ndarray  # int32 (scales, MEAN_SUBSTEPS, 511)
    padded: np.ndarray  # pixel_cdf flattened, int32, with one leading and LEVELS trailing zeros
    weight_of: np.ndarray  # int64 (LOGIT_RANGE * LOGIT_STEPS + 1,)
    inv_sigma: np.ndarray  # float32: 2**PHI_BITS * exp(-logvar / 2) on the logvar grid
    phi: np.ndarray  # float64
    phi_step: np.ndarray  # float64: phi[i + 1] - phi[i]
    edges: np.ndarray  # float64 (2**b + 1,)
    edges32: np.ndarray  # the same in float32, for the posterior's arithmetic
    centers: np.ndarray  # float32 (2**b,)
    group_centers: np.ndarray  # float32 (2**(b//2),): prior medians of the coarse groups
    fingerprint: int  # CRC-32 over every table: seeds the pixel checksum
    #: The exact table set (integer bundles, runtime/exact.py): edges are the interior int64 edges
    #: in 2**-20 units, centers and group_centers int32 decoder latent indices, inv_sigma int64,
    #: phi int64 (2**28 scale); phi_step and edges32 are None.
    exact: bool = False

    @property
    def buckets(self) -> int:
        """Buckets per latent dimension."""
        return 1 << self.bucket_bits

    @property
    def fine(self) -> int:
        """Buckets per coarse group of the two-stage latent code."""
        return 1 << (self.bucket_bits - self.bucket_bits // 2)


@lru_cache(maxsize=8)
def tables(bucket_bits: int = LATENT_BUCKET_BITS, exact_set: bool = False) -> Tables:
    """The lookup tables for ``bucket_bits`` (cached; about 0.2 s to build): the float set of float
    bundles, or with ``exact_set`` the exact set of integer bundles (runtime/exact.py)."""
    if not MIN_BUCKET_BITS <= bucket_bits <= MAX_BUCKET_BITS:
        raise ValueError(f"bucket bits must be in {MIN_BUCKET_BITS}..{MAX_BUCKET_BITS}")
    if exact_set:
        pixel_cdf = exact.pixel_cdf()
        padded = np.concatenate([[0], pixel_cdf.reshape(-1), np.zeros(LEVELS)]).astype(np.int32)
        edges, centers, group_centers = exact.buckets(bucket_bits)
        return Tables(bucket_bits, pixel_cdf, padded, exact.weight_table(), exact.sigma_inv(), exact.phi_table(),
                      None, edges, None, centers, group_centers, exact.fingerprint(bucket_bits), True)
    pixel_cdf = _pixel_cdf()
    padded = np.concatenate([[0], pixel_cdf.reshape(-1), np.zeros(LEVELS)]).astype(np.int32)
    weight_of = np.floor(WEIGHT_ONE * np.exp(-np.arange(int(LOGIT_RANGE * LOGIT_STEPS) + 1) / LOGIT_STEPS))
    weight_of = np.maximum(weight_of, 1).astype(np.int64)  # every component keeps a weight
    lo, hi = LOGVAR_RANGE
    logvar = lo + np.arange(int((hi - lo) * (1 << LOGVAR_BITS)) + 1) / (1 << LOGVAR_BITS)
    inv_sigma = (np.exp(-0.5 * logvar) * (1 << PHI_BITS)).astype(np.float32)
    # Phi from math.erfc (numpy has no erf); a running max makes it monotone whatever the libm.
    reach = int(PHI_RANGE * (1 << PHI_BITS))
    phi = np.array([0.5 * math.erfc(-i / (1 << PHI_BITS) / math.sqrt(2.0)) for i in range(-reach, reach + 1)])
    phi = np.maximum.accumulate(phi)
    buckets = 1 << bucket_bits
    normal = NormalDist()
    edges = np.array([-np.inf] + [normal.inv_cdf(i / buckets) for i in range(1, buckets)] + [np.inf])
    centers = np.array([normal.inv_cdf((i + 0.5) / buckets) for i in range(buckets)], dtype=np.float32)
    groups = 1 << (bucket_bits // 2)
    group_centers = np.array([normal.inv_cdf((g + 0.5) / groups) for g in range(groups)], dtype=np.float32)
    crc = 0
    for array in (pixel_cdf, weight_of, inv_sigma, phi, edges, centers, group_centers):
        crc = zlib.crc32(array.astype(array.dtype.newbyteorder("<")).tobytes(), crc)
    return Tables(bucket_bits, pixel_cdf, padded, weight_of, inv_sigma, phi, np.diff(phi), edges,
                  edges.astype(np.float32), centers, group_centers, crc)


@lru_cache(maxsize=1)
def _pixel_cdf() -> np.ndarray:
    lo, hi = LOG_SCALE_RANGE
    log_scales = lo + np.arange(int((hi - lo) * LOG_SCALE_STEPS) + 1) / LOG_SCALE_STEPS
    scale = np.exp(log_scales) * PIXEL_SCALE  # in pixel levels
    offset = np.arange(MEAN_SUBSTEPS) / MEAN_SUBSTEPS
    edge = np.arange(-(LEVELS - 1), LEVELS) + 0.5  # upper edges relative to the mean's level
    t = (edge[None, None, :] - offset[None, :, None]) / scale[:, None, None]
    with np.errstate(over="ignore"):
        cdf = 1.0 / (1.0 + np.exp(-t))
    counts = np.floor(cdf * (TOTAL - LEVELS))
    return np.maximum.accumulate(counts, axis=2).astype(np.int32)


# -- table building (shared verbatim by compress and decompress) -------------------------------


def _from_cumulative(cumulative: np.ndarray, axis: int = -1) -> np.ndarray:
    """Non-decreasing cumulative values (..., n + 1) along ``axis`` -> constriction floats (..., n)
    (the table axis last).

    The result is ``mass - 1`` of integer masses >= 1 summing to 2**24, proportional to the
    increments up to flooring; a row without any increment becomes uniform. Only IEEE basic
    operations: the same on every machine.
    """
    span = np.moveaxis(np.asarray(cumulative), axis, -1).astype(np.float64)
    n = span.shape[-1] - 1
    span -= span[..., :1].copy()
    total = span[..., -1:].copy()
    empty = total <= 0
    if empty.any():  # a far tail where every increment rounded away: spread evenly
        span = np.where(empty, np.arange(n + 1, dtype=np.float64), span)
        total = np.where(empty, float(n), total)
    span *= float(TOTAL - n)
    span /= total
    np.floor(span, out=span)
    span[..., -1] = TOTAL - n
    return exact.differences(span, axis)


def _categorical(weights: np.ndarray, axis: int = -1) -> np.ndarray:
    """Non-negative integer weights (..., n) along ``axis`` -> constriction floats (..., n), see
    _from_cumulative."""
    return _from_cumulative(exact.cumulative(weights, axis), axis)


def _first_max(values: np.ndarray) -> np.ndarray:
    """Index of the largest of values (B, K, P) along K, the first of equals: int32 (B, P).

    A loop over the components: numpy's argmax runs one tiny loop per pixel there.
    """
    best, index = values[:, 0].copy(), np.zeros(values[:, 0].shape, dtype=np.int32)
    for k in range(1, values.shape[1]):
        larger = values[:, k] > best
        np.copyto(best, values[:, k], where=larger)
        np.copyto(index, k, where=larger)
    return index


def _rows(table: np.ndarray, start: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """table[start + offsets], start (...,), offsets (n,) or (..., n): (..., n).

    Evenly spaced 1-D offsets are read as rows of a strided window view of the table: one index
    per row instead of n (the pixel stages of lossless coding), several times faster.
    """
    start = np.asarray(start)
    if offsets.ndim == 1 and len(offsets) > 1:
        step = int(offsets[1] - offsets[0])
        if step > 0 and np.array_equal(offsets, offsets[0] + step * np.arange(len(offsets))):
            span = step * (len(offsets) - 1)
            windows = np.lib.stride_tricks.as_strided(table, shape=(len(table) - span, len(offsets)),
                                                      strides=(table.strides[0], step * table.strides[0]),
                                                      writeable=False)
            return windows[start + int(offsets[0])]
    return table[start[..., None] + offsets]


class _Likelihood:
    """The decoder's mixture for one lane step (B images, P pixels, K components), on grids.

    Component k of pixel p has the full-table cumulative C(v) = G(v) + v over levels v = 0..256,
    G the lookup-table counts (0 at v = 0, 2**24 - 256 at v = 256): every level has mass >= 1.
    Per-component arrays are (B, K, P): every loop over components then runs over long rows.
    """

    def __init__(self, params: MixtureParams | MixtureIndices, t: Tables, bins: Binning | None = None) -> None:
        self.bins = bins if bins is not None else binning(0)
        #: The table renormalisation of the table set (float: binary64; exact: integers).
        self.renorm = exact.renorm if t.exact else _from_cumulative
        self.categorical = exact.categorical if t.exact else _categorical
        #: The table set's fingerprint (seeds the checks of single-image near-lossless streams).
        self.fingerprint = t.fingerprint
        if isinstance(params, MixtureIndices):  # an integer bundle: the outputs are the grid indices
            batch, components = params.logit_index.shape[:2]
            shape = (batch, components, -1)
            grid = np.clip(params.mean_index.reshape(shape), *contract.index_range("mixture_mean_index"))
            scale = np.clip(params.log_scale_index.reshape(shape), *contract.index_range("mixture_log_scale_index"))
            steps = np.clip(params.logit_index.reshape(shape), *contract.index_range("mixture_logit_index"))
        else:
            grid, scale, steps = self._grids(params)
        self._build(grid.astype(np.int32), scale.astype(np.int32), steps.astype(np.int64), t)

    @staticmethod
    def _grids(params: MixtureParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A float bundle's outputs rounded to the grids: mean, log-scale and logit indices (B, K, P)."""
        batch, components = params.logits.shape[:2]
        shape = (batch, components, -1)
        # float32 IEEE arithmetic on the network's float32 outputs; NaN (never from a sane network)
        # becomes 0 so that it cannot turn into an out-of-range index.
        means = np.nan_to_num(params.means.reshape(shape), copy=True)
        means += np.float32(1.0)
        means *= np.float32(PIXEL_SCALE * MEAN_SUBSTEPS)
        grid = np.rint(np.clip(means, 0.0, (LEVELS - 1) * MEAN_SUBSTEPS, out=means)).astype(np.int64)
        lo, hi = LOG_SCALE_RANGE
        log_scales = np.clip(np.nan_to_num(params.log_scales.reshape(shape), copy=True), lo, hi)
        scale = np.rint((log_scales - np.float32(lo)) * np.float32(LOG_SCALE_STEPS)).astype(np.int64)
        logits = np.clip(np.nan_to_num(params.logits.reshape(shape), copy=True), -1e6, 1e6)
        steps = np.rint(logits * np.float32(LOGIT_STEPS)).astype(np.int64)
        return grid, scale, steps

    def _build(self, grid: np.ndarray, scale: np.ndarray, steps: np.ndarray, t: Tables) -> None:
        # grid >= 0 (clipped): // and % by MEAN_SUBSTEPS as a shift and a mask, 10x faster than divmod
        level, fraction = grid >> _MEAN_SUBSTEP_BITS, grid & (MEAN_SUBSTEPS - 1)
        #: Index in t.padded of G(1) of each component (B, K, P), int32: the row of (scale, mean
        #: fraction), shifted by the mean's level.
        self.first_of = (scale * MEAN_SUBSTEPS + fraction) * (2 * LEVELS - 1) + (LEVELS - level)
        top = steps.max(axis=1, keepdims=True)
        drop = np.minimum(top - steps, len(t.weight_of) - 1)
        #: Mixture weight tables, constriction floats (B, P, K).
        self.weights = self.categorical(t.weight_of[drop], axis=1)
        #: One component: k is always 0 and carries no information, so it is not coded at all
        #: (constriction cannot represent a one-symbol distribution, and it would cost 0 bits).
        self.single = grid.shape[1] == 1
        self.padded = t.padded
        self._grid, self._steps = grid, steps

    @cached_property
    def prediction(self) -> np.ndarray:
        """The model's prediction of each pixel (B, P) int64: the mean of its heaviest component
        (the first of equals), rounded to a level; integer arithmetic on the grids."""
        heaviest = _first_max(self._steps)[:, None].astype(np.int64)
        return (np.take_along_axis(self._grid, heaviest, axis=1)[:, 0].astype(np.int64) + MEAN_SUBSTEPS // 2) // MEAN_SUBSTEPS

    @cached_property
    def _weight_mass(self) -> np.ndarray:
        """The integer weight masses (B, K, P), float64."""
        return self.weights.transpose(0, 2, 1) + 1.0

    def component_posterior(self, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Q(k|bin,z) for bin indices (B, P) (levels when lossless): constriction floats (B, P, K),
        and the most probable k (B, P)."""
        bins = self.bins
        j = symbols.astype(np.intp)[:, None, :]
        lo, hi = bins.starts[j].astype(np.int32), bins.ends[j].astype(np.int32)
        top = np.where(hi == LEVELS - 1, TOTAL - LEVELS, self.padded.take(self.first_of + hi))
        bottom = np.where(lo == 0, 0, self.padded.take(self.first_of + (lo - 1)))
        # weight mass * bin mass C(hi + 1) - C(lo), with C(v) = G(v) + v
        top -= bottom
        top += hi - lo + 1
        joint = self._weight_mass * top
        return self.categorical(joint, axis=1), _first_max(joint)

    def chosen(self, component: np.ndarray) -> np.ndarray:
        """Where each pixel's chosen component (B, P) has its G(1)."""
        return np.take_along_axis(self.first_of, component[:, None, :].astype(np.intp), axis=1)[:, 0]

    def _cumulative(self, first: np.ndarray, start: np.ndarray | int, offsets: np.ndarray) -> np.ndarray:
        """C(v) = G(v) + v, int32 (B, P, n), of the components whose G(1) is at ``first`` (B, P), at
        levels v = start + offsets (start (B, P) or 0; offsets (n,) or (B, P, n) increasing along n
        until they reach 256; levels past 256 count as 256)."""
        start = np.asarray(start)
        cumulative = _rows(self.padded, first + start - 1, offsets)
        cumulative += start[..., None]
        cumulative += offsets
        # The ends: C(0) = 0 and C(256) = 2**24 whatever the table row. Levels rise along a row,
        # so 0 can only be the first and 256 (or past it) only a run of the last: look at those
        # columns only.
        level = start + offsets[..., 0]
        np.copyto(cumulative[..., 0], 0, where=level == 0)
        for column in range(cumulative.shape[-1] - 1, -1, -1):
            top = start + offsets[..., column] >= LEVELS
            if not top.any():
                break
            np.copyto(cumulative[..., column], TOTAL, where=top)
        return cumulative

    def groups(self, first: np.ndarray) -> np.ndarray:
        """Stage 1, the bin's group bin // group: constriction floats (B, P, groups)."""
        bins = self.bins
        bounds = bins.edges[np.arange(1, bins.groups) * bins.group].astype(np.int32)
        inner = self._cumulative(first, 0, bounds)
        # C runs from 0 to exactly 2**24 with a step >= 1 per level, so >= 1 per group: the group
        # masses need no rescaling.
        masses = np.empty(first.shape + (len(bounds) + 1,), dtype=np.float32)
        masses[..., 0] = inner[..., 0]
        np.subtract(inner[..., 1:], inner[..., :-1], out=masses[..., 1:-1], casting="unsafe")
        masses[..., -1] = TOTAL - inner[..., -1]
        masses -= np.float32(1.0)
        return masses

    def within(self, first: np.ndarray, group: np.ndarray) -> np.ndarray:
        """Stage 2, the bin within its group (B, P): constriction floats (B, P, group).

        A last group with fewer bins pads with empty entries (mass 1 each after rescaling).
        """
        bins = self.bins
        start = group.astype(np.int32) * bins.group
        if bins.lossless:  # bins are levels: levels start .. start + group
            return self.renorm(self._cumulative(first, start, np.arange(bins.group + 1, dtype=np.int32)))
        index = np.minimum(start[..., None] + np.arange(bins.group + 1), bins.bins)
        return self.renorm(self._cumulative(first, 0, bins.edges[index].astype(np.int32)))

    def _mixture_cumulative(self, start: np.ndarray | int, offsets: np.ndarray) -> np.ndarray:
        """The mixture's cumulative M(v) = sum_k weight mass_k * C_k(v) at levels v = start +
        offsets (as :meth:`_cumulative`): int64 (B, P, n), from 0 at v = 0 to exactly 2**48 at
        v = 256 (weight masses sum to 2**24), so below 2**53 and exact in float64 (where it is
        summed)."""
        total = np.zeros(np.shape(np.asarray(start)[..., None] + offsets), dtype=np.float64)
        for k in range(self.first_of.shape[1]):
            total += self._cumulative(self.first_of[:, k], start, offsets) * self._weight_mass[:, k, :, None]
        return total.astype(np.int64)

    def mixture_tables(self, edges: np.ndarray) -> np.ndarray:
        """The whole mixture's table over the runs between level edges (B, P, n + 1), non-decreasing
        from 0 to LEVELS where a run is meant to cover all levels: constriction floats (B, P, n)."""
        return self.renorm(self._mixture_cumulative(0, np.asarray(edges, dtype=np.int32)))


class _Posterior:
    """Q(z|x) over the buckets of each latent dimension for one lane step (B images, D dims)."""

    def __init__(self, t: Tables, mean: np.ndarray, logvar: np.ndarray) -> None:
        mu = np.rint(np.clip(np.nan_to_num(mean.astype(np.float64)), -POSTERIOR_MEAN_CLAMP, POSTERIOR_MEAN_CLAMP)
                     * (1 << POSTERIOR_MEAN_BITS)) / (1 << POSTERIOR_MEAN_BITS)
        lo, hi = LOGVAR_RANGE
        lv = np.clip(np.nan_to_num(logvar.astype(np.float64)), lo, hi)
        self.t = t
        self.mu = mu.astype(np.float32)  # exact: multiples of 2**-10 below 8
        self.scale = t.inv_sigma[np.rint((lv - lo) * (1 << LOGVAR_BITS)).astype(np.int64)]
        #: Bucket of each posterior mean (B, D): the latent of a chain's first image.
        self.mode = (np.searchsorted(t.edges, mu, side="right") - 1).astype(np.int32)

    def _cdf(self, index: np.ndarray) -> np.ndarray:
        """Phi((e_index - mu) / sigma), float64, for bucket edge indices (B, D, n); non-decreasing in n.

        Linear interpolation in the Phi table: rounding the standardized distance to the table's
        grid instead would merge neighbouring fine buckets of wide posteriors (a worse Q).
        """
        t = self.t
        reach = np.float32(PHI_RANGE * (1 << PHI_BITS))
        position = (t.edges32[index] - self.mu[..., None]) * self.scale[..., None]
        np.clip(position, -reach, reach, out=position)
        position += reach
        cell = np.minimum(position.astype(np.int64), len(t.phi) - 2)
        value = t.phi[cell] + (position - cell).astype(np.float64) * t.phi_step[cell]
        return np.maximum.accumulate(value, axis=-1)  # interpolation never decreases; make it certain

    def groups(self) -> np.ndarray:
        """Stage 1, the bucket's group: constriction floats (B, D, 2**(b//2))."""
        index = np.arange(0, self.t.buckets + 1, self.t.fine)
        return _from_cumulative(self._cdf(np.broadcast_to(index, self.mu.shape + index.shape)))

    def within(self, group: np.ndarray) -> np.ndarray:
        """Stage 2, the bucket within its group (B, D): constriction floats (B, D, 2**(b - b//2))."""
        return _from_cumulative(self._cdf(group[..., None].astype(np.int64) * self.t.fine + np.arange(self.t.fine + 1)))


class _ExactPosterior:
    """Q(z|x) over the buckets from an integer bundle's indices, on the exact table set: integers
    only (docs/FORMAT.md §7.4). Same interface as :class:`_Posterior`."""

    def __init__(self, t: Tables, mean_index: np.ndarray, logvar_index: np.ndarray) -> None:
        self.t = t
        self.mean = np.clip(mean_index, *contract.index_range("mean_index")).astype(np.int64)
        self.logvar = np.clip(logvar_index, *contract.index_range("logvar_index")).astype(np.int64)
        #: every edge position E_0 .. E_2**b (float64; the infinite ends are replaced by _table)
        self.edges = exact.edge_positions(t.bucket_bits)
        # the bucket holding the mean: how many interior edges lie at or below it
        at = self.mean << (exact.POSITION_BITS - contract.POSTERIOR_MEAN_BITS)
        self.mode = np.searchsorted(t.edges, at, side="right").astype(np.int32)

    def _table(self, edges: np.ndarray, low_end: np.ndarray | bool, high_end: np.ndarray | bool) -> np.ndarray:
        """renorm of exact.posterior_cdf at edges (B, D, n) or (n,) given as positions (the end
        columns' values are ignored: ``low_end`` / ``high_end`` (B, D) say where they are the edges
        -inf / +inf)."""
        x = exact.posterior_positions(edges, self.mean, self.logvar)
        x[..., 0] = np.where(low_end, 0, x[..., 0])
        x[..., -1] = np.where(high_end, exact.POSITION_END, x[..., -1])
        return exact.posterior_table(x)

    def groups(self) -> np.ndarray:
        """Stage 1, the bucket's group: constriction floats (B, D, 2**(b//2))."""
        return self._table(self.edges[:: self.t.fine], True, True)

    def within(self, group: np.ndarray) -> np.ndarray:
        """Stage 2, the bucket within its group (B, D): constriction floats (B, D, 2**(b - b//2))."""
        # edges g * fine .. (g + 1) * fine of each latent: one row of a window view each
        rows = np.lib.stride_tricks.sliding_window_view(self.edges, self.t.fine + 1)[:: self.t.fine]
        return self._table(rows[group], group == 0, group == self.t.buckets // self.t.fine - 1)


# -- payload -----------------------------------------------------------------------------------


def chain_count(count: int, per_chain: int = MIN_CHAIN_IMAGES) -> int:
    """Chains used for ``count`` images: one per ``per_chain`` images (lossless: MIN_CHAIN_IMAGES;
    a binning's ``chain_images``), 1 .. MAX_CHAINS."""
    if count <= 0:
        return 0
    return max(1, min(MAX_CHAINS, count // per_chain))


@dataclass(frozen=True)
class Encoded:
    """A lossless payload and what it cost."""

    payload: bytes
    count: int
    chains: int
    #: ANS bits held by all chains after their first images (coded without bits back).
    initial_bits: int
    #: ANS bits of all chains at the end (the payload minus its header and rounding).
    coded_bits: int

    def net_bits_per_image(self) -> float | None:
        """Steady-state cost: bits added per image after the chains' first images (None if none)."""
        if self.count <= self.chains:
            return None
        return (self.coded_bits - self.initial_bits) / (self.count - self.chains)

    def gross_bits_per_image(self) -> float | None:
        """Everything in the payload, per image (None for zero images)."""
        return 8 * len(self.payload) / self.count if self.count else None


@dataclass(frozen=True)
class PayloadHeader:
    """The fixed fields of a lossless payload."""

    bucket_bits: int
    chains: int
    checksum: int
    words: tuple[int, ...]  # ANS words of chains 0 .. C-2
    data_offset: int


def read_payload_header(payload: bytes, count: int, bins: Binning | None = None) -> PayloadHeader:
    """Parse and check a payload's header against the image count; ContainerError if malformed.

    ``bins``: the payload's binning (default: lossless)."""
    bins = bins if bins is not None else binning(0)
    kind = _kind(bins)
    data = bytes(payload)
    if len(data) < 1:
        raise ContainerError(f"{kind} payload is truncated (empty)")
    bits = data[0]
    if not MIN_BUCKET_BITS <= bits <= MAX_BUCKET_BITS:
        raise ContainerError(f"{kind} payload is damaged (latent bucket bits {bits} not in "
                             f"{MIN_BUCKET_BITS}..{MAX_BUCKET_BITS})")
    chains, pos = decode_varint(data, 1, len(data), "chain count")
    if count < 0 or count > bins.max_images_per_byte * len(data):
        raise ContainerError(f"{kind} payload is damaged ({count} images cannot fit in {len(data)} bytes)")
    expected = chain_count(count, bins.chain_images)
    if chains != expected:  # the writer's choice is a function of the count: a forged count fails here
        raise ContainerError(f"{kind} payload is damaged ({chains} chains for {count} images, expected {expected})")
    if pos + 4 > len(data):
        raise ContainerError(f"{kind} payload is truncated (inside the pixel checksum)")
    (checksum,) = struct.unpack("<I", data[pos : pos + 4])
    pos += 4
    words = []
    for _ in range(max(chains - 1, 0)):
        n, pos = decode_varint(data, pos, len(data), "chain length")
        if n < 1:
            raise ContainerError(f"{kind} payload is damaged (empty chain)")
        words.append(n)
    rest = len(data) - pos - 4 * sum(words)
    if chains and rest < 1:
        raise ContainerError(f"{kind} payload is truncated (chain data shorter than its lengths)")
    if not chains and rest:
        raise ContainerError(f"{kind} payload is damaged (data after an empty header)")
    return PayloadHeader(bits, chains, checksum, tuple(words), pos)


def _checksum(pixels: np.ndarray, t: Tables) -> int:
    return zlib.crc32(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes(), t.fingerprint)


def _constriction() -> Any:
    import constriction

    return constriction


# -- encode / decode ---------------------------------------------------------------------------


def lanes(chains: int) -> list[list[int]]:
    """The chains of each lane: chain c runs in lane c mod LANES."""
    return [list(range(lane, chains, LANES)) for lane in range(min(LANES, chains))]


#: Called by decoding with (image indices, their bins (B, P), the decoder's likelihood parameters
#: at their latents): lets near-lossless decoding reconstruct pixels without a second network call.
OnDecoded = Callable[[list[int], np.ndarray, "MixtureParams"], None]


class _Coding:
    """What every lane of one encode or decode shares: the model, tables, models of constriction."""

    def __init__(self, model: EdgeVAE, t: Tables, count: int, chains: int, progress: Progress | None,
                 bins: Binning) -> None:
        constriction = _constriction()
        self.model, self.t, self.count, self.chains, self.bins = model, t, count, chains, bins
        self.family = constriction.stream.model.Categorical(perfect=False)
        self.prior = constriction.stream.model.Uniform(t.buckets)
        self.group_prior = constriction.stream.model.Uniform(t.buckets // t.fine)
        self.shape = model.image_shape
        #: A context bundle's pixel groups: the flat pixel positions of each (group 0 first).
        self.groups = _group_positions(getattr(model, "pixel_groups", 1), getattr(model, "pixel_tile", None), self.shape)
        if len(self.groups) > 1 and not bins.lossless:
            raise InputError(f"{model.bundle.name} codes pixels in groups, for lossless compression only; "
                             "pick another model for near-lossless (--max-error)")
        self._progress, self._lock = progress, threading.Lock()
        #: Set when the job stops early (Ctrl-C, or an error in another lane): lanes stop at their next step.
        self.stopped = threading.Event()
        #: Decoding only: sees each step's images (see OnDecoded).
        self.on_decoded: OnDecoded | None = None

    def posterior(self, images: np.ndarray) -> _Posterior | _ExactPosterior:
        """The posterior of a step's images (what the encoder sees) on this job's table set."""
        if self.t.exact:
            return _ExactPosterior(self.t, *self.model.encode_indices(images))
        return _Posterior(self.t, *self.model.encode(images))

    def likelihood(self, z: np.ndarray, first: bool) -> MixtureParams | MixtureIndices:
        """The decoder's mixture at buckets ``z`` (B, D) (coarse groups for a chain's first image)."""
        latents = self.t.group_centers[z] if first else self.t.centers[z]
        return self.model.likelihood_indices(latents) if self.t.exact else self.model.likelihood(latents)

    def group_likelihood(self, params: MixtureParams | MixtureIndices, group: int, pixels: np.ndarray) -> _Likelihood:
        """The likelihood of pixel group ``group`` of a step's images: the decoder's mixture for
        group 0 (every pixel without groups), else the context graph's given the groups before it
        (``pixels`` (B, P): what is known of them; the rest is never read)."""
        if len(self.groups) == 1:
            return _Likelihood(params, self.t, self.bins)
        if group:
            c, h, w = self.shape
            known = np.zeros(c * h * w, dtype=np.uint8)
            known[np.concatenate(self.groups[:group])] = 1
            pixels, known = pixels.reshape(len(pixels), c, h, w), known.reshape(1, c, h, w)
            if isinstance(params, MixtureIndices):
                params = self.model.context_likelihood_indices(params, pixels, known)
            else:
                params = self.model.context_likelihood(params, pixels, known)
        return _Likelihood(_at_pixels(params, self.groups[group]), self.t, self.bins)

    def in_group(self, x: np.ndarray, group: int) -> np.ndarray:
        """The pixels (B, P_group) of ``group`` of a step's images x (B, P): x itself without groups."""
        return x if len(self.groups) == 1 else x[:, self.groups[group]]

    def check_stopped(self) -> None:
        """Called by lanes between steps: end this lane if the job is stopping."""
        if self.stopped.is_set():
            raise _Stopped

    def steps(self, lane: list[int]) -> list[tuple[int, list[int]]]:
        """(step, image indices) of a lane, in compress order; image = step * chains + chain."""
        out = []
        for step in range(-(-self.count // self.chains)):
            images = [step * self.chains + c for c in lane if step * self.chains + c < self.count]
            if images:
                out.append((step, images))
        return out

    def progress(self, n: int) -> None:
        if self._progress:
            with self._lock:  # lanes report from their threads
                self._progress(n)

    def run(self, work: Callable[[list[int]], Any]) -> list[Any]:
        """``work(lane)`` for every lane, in parallel threads when there are several.

        If the calling thread is interrupted (Ctrl-C) or a lane fails, the other lanes stop at
        their next step, so the job ends within one step instead of running to its end.
        """
        groups = lanes(self.chains)
        if len(groups) <= 1:
            return [work(lane) for lane in groups]
        # onnxruntime and numpy release the GIL: one lane's network call overlaps the other's tables.
        pool = ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="edgevae-bitsback")
        try:
            futures = [pool.submit(work, lane) for lane in groups]
            return [future.result() for future in futures]
        except BaseException:
            self.stopped.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # at most the step each lane is in


class _Stopped(Exception):
    """A lane ended early because its job is stopping (never seen outside this module)."""


#: Bits a valid chain may appear to be short by at one decode step: constriction's ANS codes
#: each symbol within 2**-8 of its information (24-bit tables in a 64-bit state), and the
#: count of valid bits is rounded at the stack's ends.
_POP_SLACK_BITS = 64.0
_POP_SLACK_PER_SYMBOL = 0.01
#: Consecutive decode steps a chain may pop more bits than it holds before it counts as damaged
#: (valid streams do so for single steps only, near a chain's start; see _decode_lane).
MAX_DRY_STEPS = 4


def _group_positions(groups: int, tile: contract.Tile | None, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Flat (C-H-W) pixel positions of each pixel group (``tile``, contract.pixel_tile), group 0
    first; one group of every position for a bundle without groups."""
    c, h, w = shape
    if groups == 1:
        return [np.arange(c * h * w)]
    ids = np.broadcast_to(np.array(contract.pixel_group_map(groups, h, w, tile)), (c, h, w)).reshape(-1)
    return [np.flatnonzero(ids == g) for g in range(groups)]


def _at_pixels(params: MixtureParams | MixtureIndices, positions: np.ndarray) -> MixtureParams | MixtureIndices:
    """The mixture of the flat pixel ``positions`` only, (B, K, len(positions)) each."""
    arrays = ((params.logits, params.means, params.log_scales) if isinstance(params, MixtureParams)
              else (params.logit_index, params.mean_index, params.log_scale_index))
    batch, components = arrays[0].shape[:2]
    return type(params)(*(a.reshape(batch, components, -1)[:, :, positions] for a in arrays))


def _information(tables: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """Bits of information (B,) of decoded ``symbols`` (B, P) under constriction tables (B, P, n)."""
    masses = np.take_along_axis(tables, symbols[..., None].astype(np.int64), axis=-1)[..., 0].astype(np.float64) + 1
    return (PRECISION - np.log2(masses)).sum(axis=-1)


def _push_pixels(stacks: list[Any], family: Any, likelihood: _Likelihood, symbols: np.ndarray,
                 k: np.ndarray) -> None:
    """Push a step's images' bins (B, P) given z, then (unless one component) their components k
    (B, P), one stack per image."""
    bins = likelihood.bins
    first = likelihood.chosen(k)
    group = (symbols // bins.group).astype(np.int32)
    groups, within = likelihood.groups(first), likelihood.within(first, group)
    rest = (symbols % bins.group).astype(np.int32)
    for i, s in enumerate(stacks):
        s.encode_reverse(rest[i], family, within[i])
        s.encode_reverse(group[i], family, groups[i])
        if not likelihood.single:
            s.encode_reverse(k[i], family, likelihood.weights[i])


def _pop_pixels(stacks: list[Any], family: Any, likelihood: _Likelihood) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pop the components and bins of a step's images, one stack each: (bins (B, P), k (B, P),
    bits of information popped (B,)). The exact reverse of :func:`_push_pixels`."""
    bins = likelihood.bins
    if likelihood.single:
        k = np.zeros(likelihood.weights.shape[:2], dtype=np.int32)
        popped = np.zeros(len(stacks))
    else:
        k = np.stack([s.decode(family, likelihood.weights[i]) for i, s in enumerate(stacks)])
        popped = _information(likelihood.weights, k)
    first = likelihood.chosen(k)
    groups = likelihood.groups(first)
    group = np.stack([s.decode(family, groups[i]) for i, s in enumerate(stacks)])
    within = likelihood.within(first, group)
    rest = np.stack([s.decode(family, within[i]) for i, s in enumerate(stacks)])
    popped += _information(groups, group) + _information(within, rest)
    # A damaged stream can name a padding entry of a last, short group: clamp it to a real bin (the
    # checksum then fails), so nothing downstream indexes outside the bins.
    symbols = np.minimum(group * bins.group + rest, bins.bins - 1)
    return symbols, k, popped


def _encode_lane(job: _Coding, batch: np.ndarray, symbols: np.ndarray, coders: list[Any], lane: list[int]) -> int:
    """Push one lane's images onto its chains' stacks; returns the bits after their first images.

    ``batch`` is what the encoder sees (the bins' representatives; the pixels when lossless),
    ``symbols`` the bins (count, P) that are coded.
    """
    t, family, initial_bits = job.t, job.family, 0
    for step, images in job.steps(lane):
        job.check_stopped()
        stacks = [coders[c] for c in lane[: len(images)]]
        x = symbols[images]
        posterior = job.posterior(batch[images])
        if step == 0:
            # Nothing to borrow from yet: no bits back for a chain's first image, which sends only
            # the group of its posterior mean's bucket (b // 2 bits per dimension under the prior).
            z = posterior.mode // t.fine
        else:
            groups = posterior.groups()
            z_group = np.stack([s.decode(family, groups[i]) for i, s in enumerate(stacks)])
            within = posterior.within(z_group)
            z = z_group * t.fine + np.stack([s.decode(family, within[i]) for i, s in enumerate(stacks)])
        _push_groups(job, stacks, job.likelihood(z, step == 0), x, step == 0)
        for i, s in enumerate(stacks):
            s.encode_reverse(z[i], job.group_prior if step == 0 else job.prior)
        if step == 0:
            initial_bits = sum(s.num_valid_bits() for s in stacks)
        job.progress(len(images))
    return initial_bits


def _push_groups(job: _Coding, stacks: list[Any], params: MixtureParams | MixtureIndices, x: np.ndarray,
                 first: bool) -> None:
    """Encoding's pixel part (bins x (B, P) given z): the reverse of :func:`_pop_groups` and of
    decoding's pushes of the components. Every group's likelihood is known here (x is), so the
    components come off the stacks group G-1 first (a chain's first image, or one component: the
    most probable, nothing popped), then the bins go on, group G-1 first. Without pixel groups,
    one group of every pixel."""
    family = job.family
    likelihoods = [job.group_likelihood(params, g, x) for g in range(len(job.groups))]
    components: list[np.ndarray] = [np.empty(0)] * len(likelihoods)
    for g in reversed(range(len(likelihoods))):
        likelihood = likelihoods[g]
        posterior, best = likelihood.component_posterior(job.in_group(x, g))
        if first or likelihood.single:
            components[g] = best
        else:
            components[g] = np.stack([s.decode(family, posterior[i]) for i, s in enumerate(stacks)])
    for g in reversed(range(len(likelihoods))):
        _push_pixels(stacks, family, likelihoods[g], job.in_group(x, g), components[g])


def _pop_groups(job: _Coding, stacks: list[Any], params: MixtureParams | MixtureIndices
                ) -> tuple[np.ndarray, list[_Likelihood], list[np.ndarray], np.ndarray]:
    """Decoding's pixel part: group after group, each with the likelihood the groups before it
    give (one group of every pixel without pixel groups). Returns the bins (B, P), each group's
    likelihood and components, and the bits popped (B,)."""
    if len(job.groups) == 1:
        likelihood = job.group_likelihood(params, 0, np.empty(0))
        x, k, popped = _pop_pixels(stacks, job.family, likelihood)
        return x, [likelihood], [k], popped
    x = np.zeros((len(stacks), sum(len(p) for p in job.groups)), dtype=np.uint8)
    likelihoods, components, popped = [], [], np.zeros(len(stacks))
    for g, positions in enumerate(job.groups):
        likelihood = job.group_likelihood(params, g, x)
        symbols, k, bits = _pop_pixels(stacks, job.family, likelihood)
        x[:, positions] = symbols
        likelihoods.append(likelihood)
        components.append(k)
        popped += bits
    return x, likelihoods, components, popped


def _decode_lane(job: _Coding, out: np.ndarray, coders: list[Any], lane: list[int]) -> None:
    """Pop one lane's images off its chains' stacks into ``out`` (count, P), last step first."""
    t, dim = job.t, job.model.latent_dim
    dry = np.zeros(len(lane), dtype=np.int64)  # consecutive steps each chain popped more than it held
    for step, images in reversed(job.steps(lane)):
        job.check_stopped()
        stacks = [coders[c] for c in lane[: len(images)]]
        # Decoding mirrors encoding's pushes, so a chain normally holds every bit a step pops. It
        # may not where encoding itself popped (bits back) from a nearly empty stack, but then the
        # symbols it drew made the next pushes costly and the stack large again: never for many
        # steps in a row for lossless images, which cost hundreds of bits each. A forged or
        # truncated chain runs dry at every step from there on and would be decoded from zeros for
        # all the images it claims: stop it after a few steps. Not for near-lossless bins: an image
        # whose bins are near certain (all black at large K) costs little more than its latent,
        # less than the bits its step borrows, so a real chain can run dry for dozens of steps;
        # there the container's tighter count bound (one image per byte) limits the work instead.
        available = np.array([s.num_valid_bits() for s in stacks], dtype=np.float64)
        prior = job.group_prior if step == 0 else job.prior
        z = np.stack([s.decode(prior, dim) for s in stacks])
        params = job.likelihood(z, step == 0)
        x, likelihoods, components, popped = _pop_groups(job, stacks, params)
        popped += dim * math.log2(t.buckets // t.fine if step == 0 else t.buckets)
        symbols = dim + x.shape[1] * (1 if likelihoods[0].single else 3)
        short = popped > available + _POP_SLACK_BITS + _POP_SLACK_PER_SYMBOL * symbols
        dry[: len(stacks)] = np.where(short, dry[: len(stacks)] + 1, 0)
        if job.bins.lossless and (dry >= MAX_DRY_STEPS).any():
            raise ContainerError(f"{_kind(job.bins)} payload is damaged (its data ends long before its images do)")
        out[images] = x
        if job.on_decoded is not None:
            job.on_decoded(images, x, params)
        if step > 0:
            family = job.family
            for g, (likelihood, k) in enumerate(zip(likelihoods, components)):
                if not likelihood.single:
                    component_posterior, _ = likelihood.component_posterior(job.in_group(x, g))
                    for i, s in enumerate(stacks):
                        s.encode_reverse(k[i], family, component_posterior[i])
            seen = job.bins.representative[x].reshape(len(images), *job.shape)
            posterior = job.posterior(seen)
            z_group = (z // t.fine).astype(np.int32)
            groups, within = posterior.groups(), posterior.within(z_group)
            z_rest = (z % t.fine).astype(np.int32)
            for i, s in enumerate(stacks):
                s.encode_reverse(z_rest[i], family, within[i])
                s.encode_reverse(z_group[i], family, groups[i])
        job.progress(len(images))


def _exact_set(model: EdgeVAE) -> bool:
    """True if ``model`` codes with the exact table set: an integer bundle (wrappers without the
    attribute are float models)."""
    return bool(getattr(model, "integer", False))


def _kind(bins: Binning) -> str:
    return "lossless" if bins.lossless else "near-lossless"


def encode(model: EdgeVAE, images: np.ndarray, progress: Progress | None = None,
           bucket_bits: int = LATENT_BUCKET_BITS, bins: Binning | None = None) -> Encoded:
    """Encode uint8 images (N, C, H, W) (or one (C, H, W)) into a payload: losslessly, or with
    ``bins`` (:func:`binning`) only each pixel's bin, so that decoding knows it to within
    ``bins.max_error`` levels.

    ``progress`` is called with the number of images finished after each lane step. The
    payload decodes with :func:`decode` and the same model and bins; the module docstring has its layout.
    """
    bins = bins if bins is not None else binning(0)
    batch = model.check_images(images)
    count = len(batch)
    t = tables(bucket_bits, _exact_set(model))
    chains = chain_count(count, bins.chain_images)
    symbols = bins.of_level[batch.reshape(count, int(np.prod(model.image_shape)))].astype(np.uint8)
    # The posterior sees what the decoder will know before it pushes the bits back: the bins.
    seen = batch if bins.lossless else bins.representative[symbols].reshape(batch.shape)
    job = _Coding(model, t, count, chains, progress, bins)
    constriction = _constriction()
    coders = [constriction.stream.stack.AnsCoder() for _ in range(chains)]
    initial_bits = sum(job.run(lambda lane: _encode_lane(job, seen, symbols, coders, lane)))
    streams = [coder.get_compressed().astype("<u4").tobytes() for coder in coders]
    header = [bytes([bucket_bits]), encode_varint(chains), struct.pack("<I", _checksum(symbols, t))]
    header += [encode_varint(len(s) // 4) for s in streams[:-1]]
    if streams:
        # constriction never ends a stream in a zero word, so the top word's zero bytes can go.
        streams[-1] = _trim(streams[-1])
    payload = b"".join(header + streams)
    if count > bins.max_images_per_byte * len(payload):  # unreachable for real images; never write an unreadable file
        raise InputError(f"{count} images compressed to {len(payload)} bytes, below the format's floor")
    coded_bits = sum(coder.num_valid_bits() for coder in coders)
    return Encoded(payload, count, chains, initial_bits, coded_bits)


def _trim(stream: bytes) -> bytes:
    """An ANS stream without the zero high bytes of its top word (constriction never ends in a zero word)."""
    return stream[: len(stream.rstrip(b"\0"))]


def _stack(raw: bytes, bins: Binning) -> Any:
    """An ANS stack over ``raw`` (zero-padded to whole words); ContainerError if constriction refuses it."""
    raw += b"\0" * (-len(raw) % 4)
    try:
        return _constriction().stream.stack.AnsCoder(np.frombuffer(raw, dtype="<u4").astype(np.uint32))
    except ValueError as e:  # constriction refuses a stream ending in a zero word
        raise ContainerError(f"{_kind(bins)} payload is damaged ({e})") from None


def decode(model: EdgeVAE, payload: bytes, count: int, progress: Progress | None = None,
           bins: Binning | None = None, on_decoded: OnDecoded | None = None) -> np.ndarray:
    """The bins, uint8 (count, C, H, W), of a payload made by :func:`encode` with this model and
    ``bins``: the exact pixels when lossless.

    ``on_decoded`` sees each step's images with their likelihood parameters (see :data:`OnDecoded`).
    Raises ContainerError if the payload is damaged or the decoded bins fail its checksum
    (e.g. a payload made on a machine whose network arithmetic differs), never wrong pixels.
    """
    bins = bins if bins is not None else binning(0)
    kind = _kind(bins)
    header = read_payload_header(payload, count, bins)
    t = tables(header.bucket_bits, _exact_set(model))
    shape = model.image_shape
    out = np.empty((count, int(np.prod(shape))), dtype=np.uint8)
    if count == 0:
        return out.reshape((0, *shape))
    data = bytes(payload)
    coders, pos = [], header.data_offset
    for n in header.words + (None,):
        raw = data[pos : pos + 4 * n] if n is not None else data[pos:]
        pos += len(raw)
        coders.append(_stack(raw, bins))
    job = _Coding(model, t, count, header.chains, progress, bins)
    job.on_decoded = on_decoded
    job.run(lambda lane: _decode_lane(job, out, coders, lane))
    if not all(coder.is_empty() for coder in coders):
        raise ContainerError(f"{kind} payload is damaged (a chain did not end where it should)")
    if _checksum(out, t) != header.checksum:
        raise ContainerError(
            f"{kind} payload does not decode to its pixel checksum: the data is damaged, or it was "
            "compressed on a machine whose model arithmetic differs from this one's (see docs/FORMAT.md)"
        )
    return out.reshape((count, *shape))


# -- near-lossless reconstruction of an integer bundle (exact) -----------------------------------

#: The mixture cumulative M (0 .. 2**48) is shifted right by this before the integer
#: reconstruction, so every product stays below 2**53 (JavaScript Numbers are exact).
RECONSTRUCTION_SHIFT = 20


def exact_reconstruct(lower: np.ndarray, upper: np.ndarray, max_error: int, params: MixtureIndices) -> np.ndarray:
    """Pixels uint8 (B, P) of bins [lower, upper] (integer levels (B, P)) under an integer bundle's
    mixture: integers only, the same on every machine (docs/FORMAT.md §8.1).

    With m(v) = (M(v + 1) >> 20) - (M(v) >> 20) the mixture's shifted mass of level v (M of
    :meth:`_Likelihood._mixture_cumulative`, exact table set) and den = sum of m over the bin:
    the end level (0 if lower == 0, 255 if upper == 255) when den > 0 and 2 m(end) >= den; else
    lower + floor((2 num + den) / (2 den)) with num = sum (v - lower) m(v) (den > 0), or
    (lower + upper) // 2 (den == 0); then clamped to [max(upper - K, 0), min(lower + K, 255)].
    """
    likelihood = _Likelihood(params, tables(LATENT_BUCKET_BITS, True), binning(0))
    lo, hi = lower.astype(np.int32), upper.astype(np.int32)
    width = 2 * max_error + 1
    offsets = np.arange(width + 1, dtype=np.int32)
    # M at lo .. lo + width (consecutive levels: one window row per component); the masses past
    # the bin are 0, as if its end level were repeated
    m = np.diff(likelihood._mixture_cumulative(lo, offsets) >> RECONSTRUCTION_SHIFT, axis=-1)
    m[offsets[:-1] > (hi - lo)[..., None]] = 0
    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
    den = m.sum(axis=-1)
    num = (m * offsets[:-1]).sum(axis=-1)
    safe = np.maximum(den, 1)
    value = np.where(den > 0, lo + (2 * num + den) // (2 * safe), (lo + hi) // 2)
    end_mass = np.where(lo == 0, m[..., 0], np.take_along_axis(m, (hi - lo)[..., None], axis=-1)[..., 0])
    at_end = (den > 0) & ((lo == 0) | (hi == LEVELS - 1)) & (2 * end_mass >= den)
    value = np.where(at_end, np.where(lo == 0, 0, LEVELS - 1), value)
    return np.clip(value, np.maximum(hi - max_error, 0), np.minimum(lo + max_error, LEVELS - 1)).astype(np.uint8)


# -- one image under a known latent (no bits back) ---------------------------------------------


@dataclass(frozen=True)
class PixelBins:
    """Bins of at most 2K + 1 levels per pixel, centred on the model's prediction c of the pixel:
    bin j covers [c + j (2K + 1) - K, c + j (2K + 1) + K] cut to 0..255, numbered from the one
    holding level 0; c is the prediction, or 0 (255) when the prediction is within K of it.
    Single images only: the decoder knows c before it decodes a bin because it knows the
    latent. The prediction's own bin is whole, so the likeliest levels share one symbol (measured
    on 200 test images against fixed bins: the same at K = 1, -2 bytes per image at K = 4, -6 at
    K = 16, -7 at K = 32, and +0.1 to +1.3 dB).
    """

    max_error: int
    centre: np.ndarray  # int64 (B, P): the prediction c, 0..255
    edges: np.ndarray  # int64 (B, P, bins + 1): first level of each bin, then LEVELS (repeated)
    first_bin: np.ndarray  # int64 (B, P): the bin lattice index j of symbol 0
    group: int  # symbols per coarse group of the two-stage code

    @property
    def bins(self) -> int:
        """Symbols per pixel (a pixel's bins past 255 are empty)."""
        return self.edges.shape[-1] - 1

    def symbols(self, pixels: np.ndarray) -> np.ndarray:
        """The bin of each level (B, P) uint8 -> int64 (B, P)."""
        width = 2 * self.max_error + 1
        return (pixels.astype(np.int64) - self.centre + self.max_error) // width - self.first_bin

    def bounds(self, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last level (B, P) of bins ``symbols`` (B, P)."""
        j = symbols.astype(np.int64)[..., None]
        return (np.take_along_axis(self.edges, j, axis=-1)[..., 0],
                np.take_along_axis(self.edges, j + 1, axis=-1)[..., 0] - 1)


def pixel_bins(likelihood: _Likelihood, max_error: int) -> PixelBins:
    """The bins of ``max_error`` centred on each pixel's prediction (see :class:`PixelBins`)."""
    width = 2 * max_error + 1
    # A prediction within K of an end snaps to it: the end bin is then [0, K] (or [255 - K, 255]),
    # whose feasible values include the end level, so backgrounds can come back exact.
    prediction = np.clip(likelihood.prediction, 0, LEVELS - 1)
    centre = np.where(prediction <= max_error, 0, np.where(prediction >= LEVELS - 1 - max_error, LEVELS - 1, prediction))
    first_bin = (max_error - centre) // width  # the bin holding level 0 (floor division)
    count = -(-LEVELS // width) + 1  # enough for any centre
    lattice = (first_bin[..., None] + np.arange(count + 1)) * width + (centre - max_error)[..., None]
    edges = np.clip(lattice, 0, LEVELS)
    return PixelBins(max_error, centre, edges, first_bin, math.isqrt(count - 1) + 1)


def _two_stage(likelihood: _Likelihood, bins: PixelBins) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Stage-1 tables (B, P, groups) and a function group (B, P) -> stage-2 tables (B, P, group)."""
    n, g = bins.bins, bins.group
    bounds = np.minimum(np.arange(-(-n // g) + 1) * g, n)
    groups = likelihood.mixture_tables(bins.edges[..., bounds])

    def within(group: np.ndarray) -> np.ndarray:
        index = np.minimum(group[..., None].astype(np.int64) * g + np.arange(g + 1), n)
        return likelihood.mixture_tables(np.take_along_axis(bins.edges, index, axis=-1))

    return groups, within


def encode_known(params: MixtureParams | MixtureIndices, images: np.ndarray, max_error: int) -> list[bytes]:
    """One ANS stream per image of uint8 images (B, C, H, W): each pixel's bin of
    :func:`pixel_bins`, under the decoder's likelihood ``params`` at latents the decoder knows
    (B images), without bits back.

    Each bin is coded under the whole mixture, in two stages (group, then place in the group):
    with nothing to pop bits back from, choosing a component instead would cost its weight's
    information on top (measured ~20 bytes per Fashion-MNIST image with 5 components). A
    stream is a 16-bit check of its bins (:data:`KNOWN_CHECK_BYTES`, little-endian: the low
    bits of the CRC-32 of the bins' first levels, uint8, seeded with the lookup tables'
    fingerprint), then the ANS words without the zero high bytes of the top word.
    """
    family = _constriction().stream.model.Categorical(perfect=False)
    likelihood = _Likelihood(params, tables(LATENT_BUCKET_BITS, isinstance(params, MixtureIndices)), binning(0))
    bins = pixel_bins(likelihood, max_error)
    symbols = bins.symbols(np.asarray(images).reshape(len(images), -1))
    group = (symbols // bins.group).astype(np.int32)
    rest = (symbols % bins.group).astype(np.int32)
    groups, within = _two_stage(likelihood, bins)
    places = within(group)
    lower = bins.bounds(symbols)[0]
    out = []
    for i in range(len(images)):
        stack = _constriction().stream.stack.AnsCoder()
        stack.encode_reverse(rest[i], family, places[i])
        stack.encode_reverse(group[i], family, groups[i])
        check = _known_check(lower[i], likelihood).to_bytes(KNOWN_CHECK_BYTES, "little")
        out.append(check + _trim(stack.get_compressed().astype("<u4").tobytes()))
    return out


#: Bytes of the check in front of a stream of :func:`encode_known`. Decoding its bins depends on
#: the decoder network's float outputs (the prediction, the tables), which another machine may
#: compute differently: the check turns that into an error instead of pixels outside the bound.
#: 16 bits, not 32: a single file is ~60-250 bytes, and a divergence usually also leaves the
#: stream not exactly empty.
KNOWN_CHECK_BYTES = 2


def _known_check(lower: np.ndarray, likelihood: _Likelihood) -> int:
    crc = zlib.crc32(np.ascontiguousarray(lower, dtype=np.uint8).tobytes(), likelihood.fingerprint)
    return crc & ((1 << (8 * KNOWN_CHECK_BYTES)) - 1)


def decode_known(params: MixtureParams | MixtureIndices, streams: list[bytes], max_error: int) -> tuple[np.ndarray, np.ndarray]:
    """The bins' first and last levels, int64 (B, P) each, of streams made by :func:`encode_known`
    with the same ``params`` and ``max_error``.

    ContainerError if a stream does not end exactly where its image does (damaged data).
    """
    family = _constriction().stream.model.Categorical(perfect=False)
    likelihood = _Likelihood(params, tables(LATENT_BUCKET_BITS, isinstance(params, MixtureIndices)), binning(0))
    bins = pixel_bins(likelihood, max_error)
    kind = _kind(binning(max_error))
    if any(len(raw) < KNOWN_CHECK_BYTES for raw in streams):
        raise ContainerError(f"{kind} payload is truncated (inside its check)")
    stacks = [_stack(bytes(raw[KNOWN_CHECK_BYTES:]), binning(max_error)) for raw in streams]
    groups, within = _two_stage(likelihood, bins)
    group = np.stack([s.decode(family, groups[i]) for i, s in enumerate(stacks)])
    places = within(group)
    rest = np.stack([s.decode(family, places[i]) for i, s in enumerate(stacks)])
    if not all(s.is_empty() for s in stacks):
        raise ContainerError(f"{kind} payload is damaged (its data does not end with its image)")
    symbols = group.astype(np.int64) * bins.group + rest
    lo, hi = bins.bounds(np.minimum(symbols, bins.bins - 1))
    for i, raw in enumerate(streams):  # an empty bin past 255 (damaged data) fails here too
        if (lo[i] > LEVELS - 1).any() or _known_check(lo[i], likelihood) != int.from_bytes(raw[:KNOWN_CHECK_BYTES], "little"):
            raise ContainerError(
                f"{kind} payload does not decode to its check: the data is damaged, or it was compressed "
                "on a machine whose model arithmetic differs from this one's (see docs/FORMAT.md)")
    return lo, hi
