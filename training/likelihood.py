"""Discretized mixture of logistics over the 256 levels of an 8-bit pixel (PixelCNN++ style).

The decoder predicts, for every pixel, K mixture logits, K means and K log-scales. The
probability of level ``k`` under one logistic component is the logistic CDF mass of the
bin ``[k - 0.5, k + 0.5]``; the two edge bins extend to -inf and +inf so the 256 masses
sum to one. The negative log-likelihood is therefore a real number of bits.

Parameters live in the normalized domain (pixels mapped to [-1, 1], so a bin has
half-width 1/255); the exported decoder graph emits them in that same domain.

    params (N, 3K, C, H, W) --split--> logits, means, log_scales (N, K, C, H, W)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The pixel domain is the contract's (runtime/contract.py), the one the exported graphs promise:
# PIXEL_SCALE maps the normalized domain to pixel levels (one level = 1); MIN_LOG_SCALE is the
# lower bound on log-scales, as in PixelCNN++ (it keeps a logistic from collapsing to a delta
# whose bin mass underflows).
from edgevae.runtime.contract import MIN_LOG_SCALE, PIXEL_LEVELS, PIXEL_SCALE

#: Half of one pixel level in the normalized [-1, 1] domain.
HALF_BIN = 1.0 / (PIXEL_LEVELS - 1)
#: The top pixel level.
TOP = float(PIXEL_LEVELS - 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Map uint8-valued pixels (any dtype, values 0..255) to float32 in [-1, 1]."""
    return images.to(torch.float32) / PIXEL_SCALE - 1.0


def split_params(
    params: torch.Tensor, components: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split (N, 3K, C, H, W) decoder output into logits, means and clamped log-scales."""
    logits, means, log_scales = params.split(components, dim=1)
    return logits, torch.tanh(means), log_scales.clamp(min=MIN_LOG_SCALE)


def log_prob(
    images: torch.Tensor,
    logits: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
) -> torch.Tensor:
    """Log-probability (nats) of each pixel of ``images`` (N, C, H, W; values 0..255).

    Mixture parameters have shape (N, K, C, H, W) in the normalized domain. Returns
    (N, C, H, W).
    """
    x = normalize(images).unsqueeze(1)
    centered = x - means
    inv_scale = torch.exp(-log_scales)
    plus_in = inv_scale * (centered + HALF_BIN)
    min_in = inv_scale * (centered - HALF_BIN)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    # Edge bins take the whole tail; written with softplus for stability.
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)
    # Where the bin mass underflows float32, use the density at the bin centre times width.
    mid_in = inv_scale * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
    log_inner = torch.where(
        cdf_delta > 1e-5,
        torch.log(cdf_delta.clamp(min=1e-12)),
        log_pdf_mid + math.log(2 * HALF_BIN),
    )
    per_component = torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_inner)
    )
    return torch.logsumexp(per_component + F.log_softmax(logits, dim=1), dim=1)


def mean_pixels(logits: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Mixture mean in pixel units, clamped to [0, 255] (float32, not rounded)."""
    if logits.shape[1] == 1:
        # One component: its weight is exactly 1. Skipping the softmax gives the same bits and
        # spares the exported decoder an onnxruntime Softmax over a size-1 axis (10% of its time).
        mean = means[:, 0]
    else:
        mean = (torch.softmax(logits, dim=1) * means).sum(dim=1)
    return ((mean + 1.0) * PIXEL_SCALE).clamp(0.0, TOP)


def sample(
    logits: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw uint8 pixels from the mixture (used for sample grids that show the full model)."""
    gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6)))
    choice = (logits + gumbel).argmax(dim=1, keepdim=True)
    mu = means.gather(1, choice).squeeze(1)
    ls = log_scales.gather(1, choice).squeeze(1)
    u = torch.rand(mu.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    x = mu + torch.exp(ls) * (torch.log(u) - torch.log1p(-u))
    return ((x + 1.0) * PIXEL_SCALE).round().clamp(0, TOP).to(torch.uint8)
