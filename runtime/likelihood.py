"""The decoder's likelihood in numpy: log p(x|z) by the contract's formula, and the negative ELBO.

The runtime's one definition of the discretized logistic mixture of :mod:`edgevae.runtime.contract`
(training/likelihood.py is the same formula in torch, for gradients; tests hold the two equal).
Bits-back coding spends about this likelihood (runtime/bitsback.py), ``score`` reports it
(runtime/novelty.py), and benchmarks use it as the yardstick of the lossless coder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgevae.runtime import contract
from edgevae.runtime.errors import InputError
from edgevae.runtime.units import bits


@dataclass(frozen=True)
class MixtureParams:
    """Decoder likelihood parameters, each float32 (N, K, C, H, W).

    Means and log-scales are in the normalized domain where pixel value v sits at
    v / 127.5 - 1 (see :mod:`edgevae.runtime.contract`).
    """

    logits: np.ndarray
    means: np.ndarray
    log_scales: np.ndarray


@dataclass(frozen=True)
class MixtureIndices:
    """An integer bundle's decoder outputs (docs/FORMAT.md §7.1), each int32 (N, K, C, H, W): the
    grid indices themselves. Logit = logit_index / 16, mean level = mean_index / 32, log-scale
    (normalized domain) = -7 + log_scale_index / 16 (runtime/contract.py)."""

    logit_index: np.ndarray
    mean_index: np.ndarray
    log_scale_index: np.ndarray

    def params(self) -> MixtureParams:
        """The same mixture as float32 parameters (exact: every value is a dyadic grid point)."""
        logits = self.logit_index.astype(np.float64) / contract.LOGIT_STEPS
        means = self.mean_index.astype(np.float64) / contract.MEAN_SUBSTEPS / contract.PIXEL_SCALE - 1.0
        log_scales = contract.LOG_SCALE_RANGE[0] + self.log_scale_index.astype(np.float64) / contract.LOG_SCALE_STEPS
        return MixtureParams(logits.astype(np.float32), means.astype(np.float32), log_scales.astype(np.float32))

    @classmethod
    def clamped(cls, logit_index: np.ndarray, mean_index: np.ndarray, log_scale_index: np.ndarray) -> MixtureIndices:
        """An integer graph's three outputs clamped to the contract's ranges (which a valid bundle
        never leaves), int32."""
        return cls(np.clip(logit_index, *contract.index_range("mixture_logit_index")).astype(np.int32),
                   np.clip(mean_index, *contract.index_range("mixture_mean_index")).astype(np.int32),
                   np.clip(log_scale_index, *contract.index_range("mixture_log_scale_index")).astype(np.int32))

    @classmethod
    def of(cls, params: MixtureParams) -> MixtureIndices:
        """The indices of a mixture whose values are grid points (the inverse of :meth:`params`)."""
        logit = np.rint(params.logits.astype(np.float64) * contract.LOGIT_STEPS)
        mean = np.rint((params.means.astype(np.float64) + 1.0) * contract.PIXEL_SCALE * contract.MEAN_SUBSTEPS)
        scale = np.rint((params.log_scales.astype(np.float64) - contract.LOG_SCALE_RANGE[0]) * contract.LOG_SCALE_STEPS)
        return cls(logit.astype(np.int32), mean.astype(np.int32), scale.astype(np.int32))


def log_likelihood(images: np.ndarray, params: MixtureParams) -> np.ndarray:
    """log p(x|z) in nats per image of uint8 images (N, C, H, W), float64, by the contract's formula."""
    return log_interval_probability(images, images, params).reshape(len(images), -1).sum(axis=1)


def _components(params: MixtureParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 log mixture weights, means in pixel levels, scales in pixel levels; each (N, K, C, H, W)."""
    logits = params.logits.astype(np.float64)
    log_weights = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    log_scales = np.maximum(params.log_scales.astype(np.float64), contract.MIN_LOG_SCALE)
    means = (params.means.astype(np.float64) + 1.0) * contract.PIXEL_SCALE
    return log_weights, means, np.exp(log_scales) * contract.PIXEL_SCALE


def log_interval_probability(lower: np.ndarray, upper: np.ndarray, params: MixtureParams) -> np.ndarray:
    """log P(lower <= v <= upper | z) in nats per pixel, float64 (N, C, H, W), for integer level
    bounds (N, C, H, W) with 0 <= lower <= upper <= 255: the mixture's mass of a run of levels.

    ``lower == upper == x`` is the likelihood of pixel x. Uses sigmoid(u) - sigmoid(l) =
    sigmoid(u) (1 - sigmoid(l)) (1 - exp(l - u)) for interior runs, so no mass underflows;
    levels 0 and 255 take the whole tails.
    """
    lo = np.asarray(lower).astype(np.float64)[:, None]
    hi = np.asarray(upper).astype(np.float64)[:, None]
    log_weights, means, scales = _components(params)
    upper_edge, lower_edge = (hi + 0.5 - means) / scales, (lo - 0.5 - means) / scales
    log_below_upper = -np.logaddexp(0.0, -upper_edge)  # log sigmoid(upper)
    log_above_lower = -np.logaddexp(0.0, lower_edge)  # log (1 - sigmoid(lower))
    with np.errstate(divide="ignore"):
        inner = log_below_upper + log_above_lower + np.log(-np.expm1(lower_edge - upper_edge))
    top = contract.PIXEL_LEVELS - 1
    per_component = np.where(lo == 0, np.where(hi == top, 0.0, log_below_upper),
                             np.where(hi == top, log_above_lower, inner))
    return np.logaddexp.reduce(per_component + log_weights, axis=1)


def interval_moments(lower: np.ndarray, upper: np.ndarray, params: MixtureParams) -> tuple[np.ndarray, np.ndarray]:
    """For integer level bounds (N, C, H, W), 0 <= lower <= upper <= 255: the conditional mean
    E[v | lower <= v <= upper, z] in pixel levels, and the share of the run's mass held by its
    end level (level 0 when lower == 0, level 255 when upper == 255, else 0); float32 (N, C, H, W).

    Each level v holds the logistic's mass on [v - 1/2, v + 1/2] (the tails at 0 and 255); the
    mean spreads that mass continuously over the run's span, which differs from the discrete
    mean by less than half a level (closed form: the integral of (t - mu) f(t) over [a, b] is
    s [g(u)] from (a - mu)/s to (b - mu)/s with g(u) = u sigmoid(u) - softplus(u), a bounded
    function, so nothing cancels badly). Tails count at their end level. A run with no
    representable mass gives its midpoint. float32 throughout: it is an estimate (callers that
    promise a bound clamp it), computed for every pixel of every decoded image.
    """
    lo = np.asarray(lower).astype(np.float32)[:, None]
    hi = np.asarray(upper).astype(np.float32)[:, None]
    top = np.float32(contract.PIXEL_LEVELS - 1)
    logits = params.logits.astype(np.float32)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    log_scales = np.maximum(params.log_scales.astype(np.float32), np.float32(contract.MIN_LOG_SCALE))
    scales = np.exp(log_scales) * np.float32(contract.PIXEL_SCALE)
    means = (params.means.astype(np.float32) + np.float32(1.0)) * np.float32(contract.PIXEL_SCALE)

    def at(edge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """sigmoid(u) and g(u) = u sigmoid(u) - softplus(u) at u = (edge - mean) / scale."""
        u = (edge - means) / scales
        e = np.exp(-np.abs(u))
        sig = np.where(u >= 0, 1 / (1 + e), e / (1 + e))
        return sig, u * sig - (np.maximum(u, 0) + np.log1p(e))

    low_end, high_end = lo == 0, hi == top
    fa, ga = at(lo - np.float32(0.5))
    fb, gb = at(hi + np.float32(0.5))
    fe, _ = at(np.where(low_end, np.float32(0.5), top - np.float32(0.5)))  # the end level's inner edge
    tail_low = np.where(low_end, fa, 0)  # mass below -1/2: level 0 (adds 0 to the first moment)
    tail_high = np.where(high_end, 1 - fb, 0)  # mass above 255.5: level 255
    inner = fb - fa
    mass = ((inner + tail_low + tail_high) * weights).sum(axis=1)
    first = ((means * inner + scales * (gb - ga) + top * tail_high) * weights).sum(axis=1)
    end_mass = (np.where(low_end, fe, np.where(high_end, 1 - fe, 0)) * weights).sum(axis=1)
    lo, hi = lo[:, 0], hi[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(mass > 0, first / mass, (lo + hi) / 2)
        share = np.where(mass > 0, end_mass / mass, 0)
    mean = np.clip(np.nan_to_num(mean, nan=0.0), lo - np.float32(0.5), hi + np.float32(0.5))
    return mean, np.nan_to_num(share, nan=0.0)


class LatentModel(Protocol):
    """What :func:`negative_elbo` needs of a model (:class:`edgevae.runtime.model.EdgeVAE` is one;
    named by its methods here, so this module never imports the model that imports it)."""

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """``images`` checked as uint8 (N, C, H, W) of the model's shape."""
        ...

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior (mean, logvar), float32 (N, D) each."""
        ...

    def log_likelihood(self, images: np.ndarray, latents: np.ndarray) -> np.ndarray:
        """log p(x|z) in nats per image, float64 (N,), at latents float32 (N, D)."""
        ...


def negative_elbo(model: LatentModel, images: np.ndarray, samples: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Negative ELBO and IWAE bound in bits per image (two float64 (N,) arrays), by Monte Carlo.

    ``samples`` posterior draws per image (numpy, seeded). The net cost of :func:`encode` per
    image approaches the negative ELBO; this is the yardstick for it.
    """
    batch = model.check_images(images)
    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    mean, logvar = (a.astype(np.float64) for a in model.encode(batch))
    log_w = np.empty((samples, len(batch)))
    for s in range(samples):
        eps = rng.standard_normal(mean.shape)
        z = mean + np.exp(0.5 * logvar) * eps
        log_prior_over_posterior = (0.5 * (eps**2 - z**2 + logvar)).sum(axis=1)
        log_w[s] = model.log_likelihood(batch, z.astype(np.float32)) + log_prior_over_posterior
    iwae = -(np.logaddexp.reduce(log_w, axis=0) - math.log(samples))
    return bits(-log_w.mean(axis=0)), bits(iwae)
