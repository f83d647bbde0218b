"""The noise models edgevae denoises, defined once: how images are corrupted, and p(y | v).

Two kinds, both acting on uint8 pixels independently:

- ``gaussian``: y = clip(round(v + sigma * n), 0, 255), n ~ N(0, 1); ``level`` is sigma in
  pixel levels. The rounding and clipping are part of the model: a noisy 0 means "v + noise
  fell at or below 0.5", which is what a camera or a saved PNG records.
- ``salt-pepper``: each pixel independently is, with probability ``level``, replaced by 0 or
  255 (equally likely); otherwise kept.

:func:`corrupt` draws noise (training, benchmarks, tests); :func:`likelihood_table` gives the
256 x 256 table p(y | v) that turns the decoder's per-pixel distribution p(v | z) into a
posterior (see :mod:`edgevae.runtime.denoising`).
"""

from __future__ import annotations

import math

import numpy as np

from edgevae.runtime.contract import PIXEL_LEVELS
from edgevae.runtime.errors import InputError

GAUSSIAN = "gaussian"
SALT_PEPPER = "salt-pepper"
KINDS = (GAUSSIAN, SALT_PEPPER)

LEVELS = PIXEL_LEVELS
#: Largest Gaussian sigma accepted (pixel levels); beyond it the image carries almost no signal.
MAX_SIGMA = 255.0


def check_noise(kind: str, level: float | None) -> None:
    """Raise InputError unless ``kind`` is known and ``level`` (if given) is in its range."""
    if kind not in KINDS:
        raise InputError(f"noise must be one of {', '.join(KINDS)}, got {kind!r}")
    if level is None:
        return
    if not isinstance(level, (int, float, np.floating, np.integer)) or not math.isfinite(float(level)):
        raise InputError(f"noise level must be a finite number, got {level!r}")
    if kind == GAUSSIAN and not 0 <= level <= MAX_SIGMA:
        raise InputError(f"sigma must be between 0 and {MAX_SIGMA:g} pixel levels, got {level:g}")
    if kind == SALT_PEPPER and not 0 <= level < 1:
        raise InputError(f"salt-and-pepper fraction must be in [0, 1), got {level:g}")


def corrupt(images: np.ndarray, kind: str, level: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy copies of uint8 images (N, ...): ``level`` is sigma (gaussian) or the fraction of
    replaced pixels (salt-pepper), a scalar or one value per image. Returns uint8, same shape."""
    check_noise(kind, None)
    x = np.asarray(images)
    per_image = np.broadcast_to(np.asarray(level, dtype=np.float64), (len(x),)).reshape((-1,) + (1,) * (x.ndim - 1))
    if kind == GAUSSIAN:
        noisy = x + per_image * rng.standard_normal(x.shape)
        return np.clip(np.rint(noisy), 0, LEVELS - 1).astype(np.uint8)
    hit = rng.random(x.shape) < per_image
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, np.where(salt, LEVELS - 1, 0), x).astype(np.uint8)


def _normal_cdf(t: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(t / math.sqrt(2.0)))


def likelihood_table(kind: str, level: float) -> np.ndarray:
    """p(y | v) for every observed level y (rows) and clean level v (columns): float64 (256, 256),
    each column sums to 1.

    Gaussian: the mass of N(v, sigma^2) in y's rounding bin [y - 0.5, y + 0.5], the bins of 0
    and 255 taking the tails (sigma 0 is the identity). Salt-and-pepper: keep v with
    probability 1 - level, else 0 or 255 with level / 2 each.
    """
    check_noise(kind, level)
    v = np.arange(LEVELS, dtype=np.float64)
    if kind == SALT_PEPPER:
        table = np.eye(LEVELS) * (1.0 - level)
        table[0] += level / 2
        table[LEVELS - 1] += level / 2
        return table
    if level == 0:
        return np.eye(LEVELS)
    # Only 513 distinct edges y - v +- 0.5 occur: cdf[k] is Phi((k - 256 + 0.5) / sigma).
    cdf = _normal_cdf((np.arange(-LEVELS, LEVELS + 1) + 0.5) / level)
    offset = (v[:, None] - v[None, :]).astype(np.int64) + LEVELS
    upper, lower = cdf[offset], cdf[offset - 1]
    upper[LEVELS - 1] = 1.0
    lower[0] = 0.0
    return np.maximum(upper - lower, 0.0)
