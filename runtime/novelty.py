"""Novelty scores: how unlike the training data an image is, where raw likelihood fails.

    bits_per_dim(x) = negative ELBO of x under the model, bits per pixel dimension
                      (Monte Carlo over q(z | x), edgevae.runtime.likelihood.negative_elbo)
    complexity(x)   = bits per pixel dimension of x as a PNG file (Pillow, zlib level 9)
    novelty(x)      = bits_per_dim(x) - complexity(x)

Why not bits_per_dim alone: likelihood models give simple images (flat backgrounds, few strokes)
high likelihood whatever they were trained on (Nalisnick et al. 2019, "Do deep generative
models know what they don't know?"); the shipped Fashion-MNIST model scores handwritten digits
as *more* likely than clothes. Serra et al. 2020 ("Input complexity and out-of-distribution
detection with likelihood-based generative models") showed that subtracting the code length of
a generic lossless compressor corrects this: the compressor measures how complex the image is
for anyone, the model how complex it is for a model of the training data; in-domain images are
those the model codes much better than the generic compressor (novelty well below 0). A PNG
file has a fixed header cost (about 0.6 bits/dim for 28x28 images); it shifts every score alike.

Threshold: a bundle may record ``novelty.threshold`` in model.json, the given percentile of the
novelty of its training images (``edgevae-train novelty-threshold``). Images above it are
flagged; by construction about (100 - percentile) % of training-like images are.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgevae.runtime.errors import InputError

#: Monte Carlo samples of the negative ELBO per image (its spread is ~0.005 bits/dim at 4).
DEFAULT_SAMPLES = 4
#: Images per negative-ELBO call; bounds memory and paces the progress bar.
CHUNK = 256
#: The generic compressor whose code length measures complexity (recorded with thresholds).
COMPLEXITY = "png-zlib9"
#: The manifest key holding the threshold.
MANIFEST_KEY = "novelty"


def complexity_bits(images: np.ndarray) -> np.ndarray:
    """Bits of each uint8 image (N, C, H, W) as a PNG file (zlib level 9), float64 (N,)."""
    from edgevae.runtime.outputs import png_bytes

    return np.array([8.0 * len(png_bytes(image, compress_level=9)) for image in images], dtype=np.float64)


@dataclass(frozen=True)
class Scores:
    """Per image scores, float64 (N,) each, in bits per pixel dimension; ``threshold`` is the
    bundle's novelty threshold (None if it records none)."""

    bits_per_dim: np.ndarray
    complexity_bpd: np.ndarray
    novelty: np.ndarray
    threshold: float | None

    @property
    def flagged(self) -> np.ndarray | None:
        """Boolean (N,): novelty above the threshold (None without a threshold)."""
        return None if self.threshold is None else self.novelty > self.threshold


def threshold_of(manifest: dict[str, Any]) -> float | None:
    """The novelty threshold a manifest records, if it was fitted with this module's complexity."""
    entry = manifest.get(MANIFEST_KEY)
    if not isinstance(entry, dict) or entry.get("complexity") != COMPLEXITY:
        return None
    value = entry.get("threshold")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def score(model: Any, images: np.ndarray, samples: int = DEFAULT_SAMPLES, seed: int = 0,
          progress: Callable[[int], None] | None = None) -> Scores:
    """Negative ELBO, complexity and novelty of uint8 images (N, C, H, W) under ``model`` (an EdgeVAE)."""
    from edgevae.runtime.likelihood import negative_elbo

    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise InputError(f"samples must be a positive integer, got {samples!r}")
    batch = model.check_images(images)
    dims = math.prod(model.image_shape)
    nelbo = np.empty(len(batch))
    for start in range(0, len(batch), CHUNK):
        part = batch[start : start + CHUNK]
        nelbo[start : start + len(part)] = negative_elbo(model, part, samples=samples, seed=seed + start)[0]
        if progress is not None:
            progress(len(part))
    bpd = nelbo / dims
    complexity = complexity_bits(batch) / dims
    return Scores(bpd, complexity, bpd - complexity, threshold_of(model.bundle.manifest))


def fit_threshold(model: Any, images: np.ndarray, percentile: float, samples: int = DEFAULT_SAMPLES,
                  seed: int = 0, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest entry for a threshold at ``percentile`` of the novelty of ``images`` (training images)."""
    if not 0 < percentile < 100:
        raise InputError(f"percentile must be between 0 and 100, got {percentile}")
    scores = score(model, images, samples=samples, seed=seed)
    return {"threshold": float(np.percentile(scores.novelty, percentile)), "percentile": percentile,
            "complexity": COMPLEXITY, "samples": samples, "images": len(images),
            "novelty_median": float(np.median(scores.novelty)), **({"fitted_on": source} if source else {})}


#: The CSV header of ``edgevae score``.
CSV_HEADER = ("name", "bits_per_dim", "novelty")


def csv_text(names: list[str], scores: Scores) -> str:
    """``name,bits_per_dim,novelty`` with one row per image (names quoted by the csv module if needed)."""
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for name, bpd, novelty in zip(names, scores.bits_per_dim, scores.novelty):
        writer.writerow([name, f"{bpd:.5f}", f"{novelty:.5f}"])
    return buffer.getvalue()
