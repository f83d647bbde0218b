"""The decoder's likelihood in numpy: log p(x|z) by the contract's formula, and the negative ELBO.

The runtime's one definition of the discretized logistic mixture of :mod:`edgevae.runtime.contract`
(training/likelihood.py is the same formula in torch, for gradients; tests hold the two equal).
Bits-back coding spends about this likelihood (runtime/bitsback.py), ``score`` reports it
(runtime/novelty.py), and benchmarks use it as the yardstick of the lossless coder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgevae.runtime import contract
from edgevae.runtime.errors import InputError

if TYPE_CHECKING:
    from edgevae.runtime.model import EdgeVAE


@dataclass(frozen=True)
class MixtureParams:
    """Decoder likelihood parameters, each float32 (N, K, C, H, W).

    Means and log-scales are in the normalized domain where pixel value v sits at
    v / 127.5 - 1 (see :mod:`edgevae.runtime.contract`).
    """

    logits: np.ndarray
    means: np.ndarray
    log_scales: np.ndarray


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


def interval_mean(lower: np.ndarray, upper: np.ndarray, params: MixtureParams) -> np.ndarray:
    """E[v | lower <= v <= upper, z] in pixel levels, float64 (N, C, H, W), for integer level bounds.

    Each level v holds the logistic's mass on [v - 1/2, v + 1/2] (the tails at 0 and 255); the
    mean is taken with that mass spread continuously over the interval's span (closed form:
    the integral of t f(t) is t F(t) - s softplus((t - mu) / s)), which differs from the
    discrete mean by less than half a level. Tails count at their end level. A run with no
    representable mass gives its midpoint. Always within [lower - 1/2, upper + 1/2].
    """
    lo = np.asarray(lower).astype(np.float64)[:, None]
    hi = np.asarray(upper).astype(np.float64)[:, None]
    log_weights, means, scales = _components(params)
    top = contract.PIXEL_LEVELS - 1
    a, b = lo - 0.5, hi + 0.5
    ta, tb = (a - means) / scales, (b - means) / scales
    fa, fb = 1.0 / (1.0 + np.exp(-ta)), 1.0 / (1.0 + np.exp(-tb))

    def softplus(t: np.ndarray) -> np.ndarray:
        return np.logaddexp(0.0, t)

    # Integral of t f(t) over [a, b], written relative to the mean to keep its terms small.
    first = (b - means) * fb - (a - means) * fa - scales * (softplus(tb) - softplus(ta)) + means * (fb - fa)
    mass = np.maximum(fb - fa, 0.0)
    tail_low = np.where(lo == 0, fa, 0.0)  # mass below -1/2 sits at level 0 (adds 0 to the first moment)
    tail_high = np.where(hi == top, 1.0 - fb, 0.0)
    weights = np.exp(log_weights)
    numerator = (weights * (first + top * tail_high)).sum(axis=1)
    denominator = (weights * (mass + tail_low + tail_high)).sum(axis=1)
    midpoint = (lo[:, 0] + hi[:, 0]) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(denominator > 0, numerator / denominator, midpoint)
    return np.clip(np.nan_to_num(mean, nan=0.0), lo[:, 0] - 0.5, hi[:, 0] + 0.5)


def negative_elbo(model: EdgeVAE, images: np.ndarray, samples: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
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
        log_w[s] = log_likelihood(batch, model.likelihood(z.astype(np.float32))) + log_prior_over_posterior
    iwae = -(np.logaddexp.reduce(log_w, axis=0) - math.log(samples))
    return -log_w.mean(axis=0) / math.log(2), iwae / math.log(2)
