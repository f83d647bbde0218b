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
    """log p(x|z) in nats per image of uint8 images (N, C, H, W), float64, by the contract's formula.

    Uses sigmoid(u) - sigmoid(l) = sigmoid(u) (1 - sigmoid(l)) (1 - exp(l - u)) for the
    interior levels, so no mass underflows; levels 0 and 255 take the whole tails.
    """
    x = images.astype(np.float64)[:, None]
    log_scales = np.maximum(params.log_scales.astype(np.float64), contract.MIN_LOG_SCALE)
    centered = x / contract.PIXEL_SCALE - 1.0 - params.means.astype(np.float64)
    inv_scale = np.exp(-log_scales)
    half_bin = 1.0 / (contract.PIXEL_LEVELS - 1)
    upper, lower = inv_scale * (centered + half_bin), inv_scale * (centered - half_bin)
    log_below_upper = -np.logaddexp(0.0, -upper)  # log sigmoid(upper)
    log_above_lower = -np.logaddexp(0.0, lower)  # log (1 - sigmoid(lower))
    inner = log_below_upper + log_above_lower + np.log(-np.expm1(lower - upper))
    per_component = np.where(x == 0, log_below_upper, np.where(x == contract.PIXEL_LEVELS - 1, log_above_lower, inner))
    logits = params.logits.astype(np.float64)
    log_weights = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return np.logaddexp.reduce(per_component + log_weights, axis=1).reshape(len(images), -1).sum(axis=1)


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
