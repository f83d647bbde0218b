"""Denoising: each pixel's posterior mean E[v | y, z] under the decoder's distribution and the noise model.

    noisy y uint8 --encoder--> q(z | y) --z (mean, or a few samples)--> decoder
    --> p(v | z) per pixel (discretized logistic mixture, contract.py)
    p(v | y, z) ~ p(y | v) p(v | z)          (noise model: edgevae.runtime.noise)
    --> denoised pixel = E[v | y, z], averaged over the z samples, rounded to uint8

Why the posterior mean and not the decoder's mean image: where the model is sure (small
logistic scale) the output follows the model; where it is unsure (edges, texture) the
observation y pulls the output towards itself, by exactly the Bayes weight. The result is the
minimum-MSE estimate given z, i.e. it maximises expected PSNR.

Why closed forms and not a sum over the 256 levels: that sum costs K x 255 sigmoids per pixel
(40 images/s in numpy on one thread, graphs included, against 900 for the closed forms).
Instead every mixture component k is split into three parts whose posterior terms are
closed-form, a few array passes per component:

- its point masses at the clipped levels 0 and 255 (exact: the contract's edge bins),
- its interior mass on 1..254, taken as a Gaussian with the component's interior mean (exact,
  from the logistic's integral, softplus) and the logistic's variance s^2 pi^2 / 3 (capped at a
  uniform's over 1..254); its posterior mean is kept inside 0.5..254.5.

Gaussian noise then gives the interior part Gaussian evidence N(y; m, tau^2 + sigma^2) and the
usual shrinkage mean; the clipped observations y = 0 and y = 255 (noise below 0.5 or above
254.5) give probit evidence Phi(.) and the truncated-normal mean (inverse Mills ratio).
Salt-and-pepper needs no Gaussian part: a pixel not at 0 or 255 is clean, and one at 0 or 255 is
either the clean value or noise, weighed by the prior masses p(0 | z), p(255 | z) and E[v | z].

Noise level unknown (``level=None``): chosen per image by maximum likelihood, the level that
maximises the evidence p(y | z, level) = prod over pixels of sum_v p(y | v) p(v | z) over a
log-spaced grid (:data:`SIGMA_GRID`, :data:`FRACTION_GRID`) refined by a parabola through the
best point and its neighbours. This accounts for clipping (a plain residual-MAD estimator is
biased on images whose background is 0, where half the noise is clipped away) and for what the
model cannot explain, which the posterior should treat as noise too.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from edgevae.runtime.contract import MIN_LOG_SCALE, PIXEL_SCALE
from edgevae.runtime.errors import InputError
from edgevae.runtime.noise import GAUSSIAN, KINDS, LEVELS, MAX_SIGMA, SALT_PEPPER, check_noise

#: Images per decoder call and posterior computation; bounds peak memory (~40 MB per chunk).
CHUNK = 128
#: Chunks in flight at once.
WORKERS = max(1, min(4, os.cpu_count() or 1))
#: Variance of a standard logistic distribution.
LOGISTIC_VARIANCE = math.pi**2 / 3
#: Variance of a uniform distribution over the interior levels 1..254.
INTERIOR_VARIANCE = (LEVELS - 2) ** 2 / 12
#: Candidate Gaussian sigmas (pixel levels) and salt-and-pepper fractions of the level estimate.
SIGMA_GRID = tuple(float(s) for s in np.geomspace(2.0, 160.0, 13).round(2))
FRACTION_GRID = tuple(float(p) for p in np.geomspace(0.005, 0.6, 11).round(4))
#: Default number of latent samples averaged over (1: the posterior mean z alone).
DEFAULT_SAMPLES = 1
#: Default number of refinement passes (re-encode the estimate, recompute the posterior of y).
#: 0: with the denoising bundle's encoder a pass gains nothing (+-0.2 dB, benchmarks/denoise.py's
#: docstring); with an encoder that never saw noise one pass gains ~0.4-0.8 dB.
DEFAULT_REFINE = 0

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _log_erfc(x: np.ndarray) -> np.ndarray:
    """log erfc(x) for x >= 0 (Numerical Recipes' erfcc, fractional error < 1.2e-7), stable for large x."""
    t = 1.0 / (1.0 + 0.5 * x)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    return np.log(t) - x * x + poly


def log_normal_cdf(a: np.ndarray) -> np.ndarray:
    """log Phi(a), accurate in both tails."""
    x = -a / _SQRT2
    lower = math.log(0.5) + _log_erfc(np.maximum(x, 0.0))  # a <= 0: Phi(a) = erfc(-a / sqrt 2) / 2
    upper = np.log1p(-0.5 * np.exp(_log_erfc(np.maximum(-x, 0.0))))  # a > 0: 1 - erfc(a / sqrt 2) / 2
    return np.where(a <= 0, lower, upper)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


class PixelPrior:
    """Each pixel's p(v | z) from decoder mixture parameters, in the three closed-form parts per
    component (see the module docstring). Component-major float32 arrays (K, P), P = N * C * H * W
    pixels in image order, pixel units: sums over the components are then a few contiguous vector
    adds, not strided reductions."""

    def __init__(self, logits: np.ndarray, means: np.ndarray, log_scales: np.ndarray) -> None:
        k = logits.shape[1]

        def pixel_major(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.moveaxis(a, 1, 0).reshape(k, -1), dtype=np.float32)

        logits = pixel_major(logits)
        logits -= logits.max(axis=0)
        self.log_w = logits - np.log(np.exp(logits).sum(axis=0))
        mu = (pixel_major(means) + 1.0) * np.float32(PIXEL_SCALE)
        s = np.exp(np.maximum(pixel_major(log_scales), MIN_LOG_SCALE)) * np.float32(PIXEL_SCALE)
        self.log_zero = -_softplus((mu - 0.5) / s)  # mass at level 0: sigmoid((0.5 - mu) / s)
        self.log_top = -_softplus((LEVELS - 1.5 - mu) / s)  # mass at level 255
        top = np.exp(self.log_top)
        interior = np.maximum(1.0 - np.exp(self.log_zero) - top, np.float32(1e-30))
        self.log_interior = np.log(interior)
        self.log_w_interior = self.log_w + self.log_interior
        # Mixture masses at levels 0 and 255, (1, P): kept 2-d so pixels() subsets them like the rest.
        self.log_mass_zero = np.log(np.maximum((np.exp(self.log_w + self.log_zero)).sum(axis=0, keepdims=True), 1e-30))
        self.log_mass_top = np.log(np.maximum(np.exp(self.log_w + self.log_top).sum(axis=0, keepdims=True), 1e-30))
        # E[v] = sum_j P(v > j) ~ integral of the survival function over [0, 255] (midpoint rule).
        self.expected = (LEVELS - 1) - s * (_softplus((LEVELS - 1 - mu) / s) - _softplus(-mu / s))
        self.m = np.clip((self.expected - top * (LEVELS - 1)) / interior, 0.5, LEVELS - 1.5)
        # A truncated logistic spreads no more than a uniform over the interior: cap its variance
        # there, or a broad component's Gaussian would put mass far outside 0..255.
        self.tau2 = np.minimum((s * s) * np.float32(LOGISTIC_VARIANCE), np.float32(INTERIOR_VARIANCE))
        self.mu, self.s = mu, s

    def pixels(self, rows: np.ndarray) -> "PixelPrior":
        """The priors of the pixels at ``rows`` (integer indices into P)."""
        sub = PixelPrior.__new__(PixelPrior)
        sub.__dict__ = {k: v[:, rows] for k, v in self.__dict__.items()}
        return sub

    def mean(self) -> np.ndarray:
        """E[v | z] per pixel, (P,)."""
        return (np.exp(self.log_w) * self.expected).sum(axis=0)

    def log_pmf(self, v: np.ndarray) -> np.ndarray:
        """log p(v | z) of integer levels v (P,) (exact, the contract's bins), float64 (P,)."""
        v = v.astype(np.float64)
        mu, s = self.mu.astype(np.float64), self.s.astype(np.float64)
        upper = np.where(v >= LEVELS - 1, np.inf, (v + 0.5 - mu) / s)
        lower = np.where(v <= 0, -np.inf, (v - 0.5 - mu) / s)
        # sigmoid(u) - sigmoid(l) = sigmoid(u) (1 - sigmoid(l)) (1 - exp(l - u)), no cancellation.
        with np.errstate(divide="ignore", over="ignore"):
            per = -np.logaddexp(0.0, -upper) - np.logaddexp(0.0, lower) + np.log(-np.expm1(lower - upper))
        return np.logaddexp.reduce(per + self.log_w, axis=0)


def _log_q(a: np.ndarray) -> np.ndarray:
    """log(1 - Phi(a))."""
    return log_normal_cdf(-a)


def _log_noise_from_zero(y: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """log p(y | v = 0) under rounded, clipped Gaussian noise (exact), y integer-valued float64."""
    inner = _log_q((y - 0.5) / sigma)
    inner = inner + np.log(-np.expm1(np.minimum(_log_q((y + 0.5) / sigma) - inner, -1e-300)))
    return np.where(y <= 0, log_normal_cdf(0.5 / sigma),
                    np.where(y >= LEVELS - 1, _log_q((LEVELS - 1.5) / sigma), inner))


def _gaussian(prior: PixelPrior, y: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and log evidence per pixel (P,) for pixels y (P,) and sigma per pixel (P,) > 0."""
    yf = y.astype(np.float64)
    if np.all(sigma == sigma[0]):  # one sigma: the edge likelihoods are a 256-entry table
        levels = np.arange(LEVELS, dtype=np.float64)
        edge = _log_noise_from_zero(levels, float(sigma[0]))
        log_l0, log_l255 = edge[y], edge[LEVELS - 1 - y.astype(np.int64)]
    else:
        log_l0, log_l255 = _log_noise_from_zero(yf, sigma), _log_noise_from_zero(LEVELS - 1 - yf, sigma)
    y32 = yf.astype(np.float32)
    s2 = prior.tau2 + (sigma * sigma).astype(np.float32)
    d = y32 - prior.m
    log_ev = -0.5 * d * d / s2 - 0.5 * np.log(s2) - np.float32(_LOG_SQRT_2PI)
    post = prior.m + prior.tau2 / s2 * d
    # Clipped observations (few pixels): probit evidence, truncated-normal mean (inverse Mills ratio).
    for level, sign in ((0, 1.0), (LEVELS - 1, -1.0)):
        rows = np.flatnonzero(y == level)
        if len(rows):
            m, sd = prior.m[:, rows].astype(np.float64), np.sqrt(s2[:, rows].astype(np.float64))
            a = sign * ((level + sign * 0.5) - m) / sd
            log_cdf = log_normal_cdf(a)
            log_ev[:, rows] = log_cdf
            post[:, rows] = m - sign * prior.tau2[:, rows] / sd * np.exp(-0.5 * a * a - _LOG_SQRT_2PI - log_cdf)
    np.clip(post, 0.5, LEVELS - 1.5, out=post)  # an interior part's mean stays inside it
    # The point masses at 0 and 255 are the same levels for every component: pool them per pixel.
    t0 = prior.log_mass_zero + log_l0.astype(np.float32)
    t1 = prior.log_mass_top + log_l255.astype(np.float32)
    t2 = prior.log_w_interior + log_ev
    top = np.maximum(np.maximum(t0, t1), t2.max(axis=0))
    e1, e2 = np.exp(t1 - top), np.exp(t2 - top)
    den = np.exp(t0 - top) + e1 + e2.sum(axis=0)
    num = e1 * np.float32(LEVELS - 1) + (e2 * post).sum(axis=0)
    return (num / den).ravel(), (top.astype(np.float64) + np.log(den.astype(np.float64))).ravel()


def _salt_pepper(prior: PixelPrior, y: np.ndarray, p: np.ndarray, evidence: bool) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and log evidence per pixel (P,) under salt-and-pepper of fraction ``p`` (P,) (exact;
    without ``evidence`` the untouched pixels' evidence, the costly part, is left at 0)."""
    yf = y.astype(np.float64)
    w = np.exp(prior.log_w)
    p0 = (w * np.exp(prior.log_zero)).sum(axis=0)
    p255 = (w * np.exp(prior.log_top)).sum(axis=0)
    expected = prior.mean()
    keep, flip = 1.0 - p, p / 2
    at0, at255 = yf == 0, yf == LEVELS - 1
    den = np.maximum(np.where(at0, keep * p0 + flip, keep * p255 + flip), 1e-300)
    num = np.where(at0, flip * expected, keep * p255 * (LEVELS - 1) + flip * expected)
    mean = np.where(at0 | at255, num / den, yf)
    log_ev = np.log(den)
    clean = np.flatnonzero(~(at0 | at255))
    log_ev[clean] = 0.0
    if evidence and len(clean):
        log_ev[clean] = np.log(keep[clean]) + prior.pixels(clean).log_pmf(y[clean])
    return mean, log_ev


def posterior(prior: PixelPrior, y: np.ndarray, kind: str, level: float | np.ndarray,
              evidence: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """E[v | y, z] per pixel (float (N, C, H, W), pixel units) and log p(y | z) per image (N,) in nats,
    for uint8 images y (N, C, H, W).

    ``level`` is one noise level for all images or one per image (N,), already validated.
    ``evidence=False`` may skip work that only the evidence needs (it is then not meaningful).
    """
    n = len(y)
    per_pixel = y.size // max(n, 1)
    levels = np.repeat(np.broadcast_to(np.asarray(level, dtype=np.float64), (n,)), per_pixel)
    flat = y.reshape(-1)
    if kind == SALT_PEPPER:
        mean, log_ev = _salt_pepper(prior, flat, levels, evidence)
    else:
        clean = levels == 0
        mean, log_ev = _gaussian(prior, flat, np.where(clean, 1.0, levels))
        if clean.any():  # sigma 0: the observation is the clean image
            rows = np.flatnonzero(clean)
            mean[rows] = flat[rows]
            log_ev[rows] = prior.pixels(rows).log_pmf(flat[rows]) if evidence else 0.0
    return mean.reshape(y.shape), log_ev.reshape(n, -1).sum(axis=1)


def estimate_level(prior: PixelPrior, y: np.ndarray, kind: str) -> np.ndarray:
    """Maximum-likelihood noise level of each image (N,): sigma in pixel levels or the salt-and-pepper
    fraction, over the log-spaced grid and refined by a parabola in log(level)."""
    grid = np.array(SIGMA_GRID if kind == GAUSSIAN else FRACTION_GRID)
    scores = np.stack([posterior(prior, y, kind, float(level))[1] for level in grid], axis=1)
    best = scores.argmax(axis=1)
    inner = np.clip(best, 1, len(grid) - 2)
    rows = np.arange(len(y))
    left, mid, right = scores[rows, inner - 1], scores[rows, inner], scores[rows, inner + 1]
    curvature = left - 2 * mid + right
    step = np.log(grid[1] / grid[0])  # uniform in log(level)
    offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
    offset = np.where(best == inner, np.clip(offset, -1.0, 1.0), 0.0)
    estimate = np.exp(np.log(grid[best]) + offset * step)
    upper = MAX_SIGMA if kind == GAUSSIAN else 0.99
    return np.clip(estimate, 0.0, upper)


def noise_level(kind: str, sigma: float | None, amount: float | None) -> float | None:
    """The one noise level of ``kind`` from the API's two names for it (``sigma`` for Gaussian,
    ``amount`` for salt-and-pepper); giving the other kind's is an error."""
    if kind == GAUSSIAN and amount is not None:
        raise InputError("amount is the salt-and-pepper fraction; Gaussian noise takes sigma")
    if kind == SALT_PEPPER and sigma is not None:
        raise InputError("sigma is the Gaussian noise std; salt-and-pepper noise takes amount")
    return check_level(kind, sigma if kind == GAUSSIAN else amount)


def check_level(kind: str, level: Any) -> float | None:
    """A validated noise level (None stays None: estimate it)."""
    if kind not in KINDS:
        raise InputError(f"noise must be one of {', '.join(KINDS)}, got {kind!r}")
    if level is None:
        return None
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise InputError(f"noise level must be a number, got {level!r}") from None
    check_noise(kind, value)
    return value


def denoise(model: Any, images: np.ndarray, sigma: float | None = None, noise: str = GAUSSIAN,
            amount: float | None = None, samples: int = DEFAULT_SAMPLES, refine: int = DEFAULT_REFINE,
            seed: int = 0, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Denoised copies of uint8 images (N, C, H, W) (or one (C, H, W)) under ``model`` (a loaded
    :class:`edgevae.runtime.model.EdgeVAE`): uint8 (N, C, H, W).

    ``noise="gaussian"``: ``sigma`` is the noise std in pixel levels (None: estimated per image).
    ``noise="salt-pepper"``: ``amount`` is the fraction of replaced pixels (None: estimated).
    Each pixel becomes its posterior mean E[v | y, z] (see the module docstring); ``refine``
    passes re-encode the estimate, ``samples`` > 1 averages over latent draws from q(z | y)
    (seeded by ``seed``). ``progress(n)`` is called as images finish. The noise levels used:
    :func:`denoise_with_levels`.
    """
    return denoise_with_levels(model, images, sigma=sigma, noise=noise, amount=amount, samples=samples,
                               refine=refine, seed=seed, progress=progress)[0]


def denoise_with_levels(model: Any, images: np.ndarray, sigma: float | None = None, noise: str = GAUSSIAN,
                        amount: float | None = None, samples: int = DEFAULT_SAMPLES, refine: int = DEFAULT_REFINE,
                        seed: int = 0, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`denoise` (same arguments), and the noise level used for each image: float64 (N,),
    the given ``sigma`` or ``amount``, or the estimate.

    ``samples`` > 1 draws are seeded by ``seed`` and the chunk, so results do not depend on
    threads. Chunks of :data:`CHUNK` images run on a few threads (onnxruntime and numpy release
    the GIL), so the graphs of one chunk overlap the numpy work of another.
    """
    level = noise_level(noise, sigma, amount)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise InputError(f"samples must be a positive integer, got {samples!r}")
    if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 0:
        raise InputError(f"refine must be an integer >= 0, got {refine!r}")
    y = model.check_images(images)
    out = np.empty_like(y)
    used = np.empty(len(y))
    starts = range(0, len(y), CHUNK)

    def run(start: int) -> int:
        part = y[start : start + CHUNK]
        out[start : start + len(part)], used[start : start + len(part)] = _denoise_chunk(
            model, part, level, noise, samples, refine, np.random.default_rng([seed, start]))
        return len(part)

    workers = min(len(starts), WORKERS)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done in pool.map(run, starts):  # in order; re-raises a chunk's error here
            if progress is not None:
                progress(done)  # from this thread only: progress bars need not be thread-safe
    return out, used


def _denoise_chunk(model: Any, y: np.ndarray, level: float | None, kind: str, samples: int, refine: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mean, logvar = model.encode(y)
    prior = PixelPrior(*_params(model, mean))
    levels = estimate_level(prior, y, kind) if level is None else np.full(len(y), level)
    estimate = _to_pixels(posterior(prior, y, kind, levels, evidence=False)[0])
    for _ in range(refine):
        # The encoder reads the current estimate, far cleaner than y: a better z, hence a sharper
        # p(v | z), while the posterior still weighs the original observation y.
        mean, logvar = model.encode(estimate)
        prior = PixelPrior(*_params(model, mean))
        estimate = _to_pixels(posterior(prior, y, kind, levels, evidence=False)[0])
    if samples > 1:
        total = posterior(prior, y, kind, levels, evidence=False)[0]
        for _ in range(samples - 1):
            z = mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape, dtype=np.float32)
            total += posterior(PixelPrior(*_params(model, z)), y, kind, levels, evidence=False)[0]
        estimate = _to_pixels(total / samples)
    return estimate, levels


def _to_pixels(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, LEVELS - 1).astype(np.uint8)


def _params(model: Any, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    params = model.likelihood(z)
    return params.logits, params.means, params.log_scales
