"""Quality levels: the policy of which quantization steps a bundle's codec offers, by name.

A level is a name and a step factor: latent dimension d is quantized with a step of
``step_factor * median posterior std of d``. Export fits one integer table per level into the
bundle's ``codec.json`` (runtime/tables.py), and from then on the levels are data of that
bundle: their names, factors and descriptions are read back from ``codec.json``
(:func:`edgevae.runtime.tables.CodecTables.levels`), a container stores only the level's index.
The standard levels below are what export writes when nothing else is asked.

Adding a level: append it to :data:`QUALITY_LEVELS` (at most 16, the container's quality
nibble); ``--step-factors`` then takes one more number. Bundles already exported keep their own
levels (a refit reads them from the bundle's codec.json) and their containers still decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class QualityLevel:
    """One quality level fitted at export: its name and its step as a multiple of the posterior std."""

    name: str
    step_factor: float
    description: str


#: Quality levels fitted into a new bundle, smallest files first. Quantization noise of a step s
#: has std s / sqrt(12), so the balanced factor 3.5 (~sqrt(12)) adds about as much noise to the
#: latents as the VAE was trained to tolerate; much finer steps buy almost no PSNR (the decoder
#: was trained on latents that noisy), coarser ones trade PSNR for bytes.
QUALITY_LEVELS: tuple[QualityLevel, ...] = (
    QualityLevel("smallest", 8.0, "fewest bytes; visibly blurrier than the model's best"),
    QualityLevel("small", 5.0, "small files, slight loss against the model's best"),
    QualityLevel("balanced", 3.5, "default: quantization noise about the posterior's own"),
    QualityLevel("high", 2.5, "close to the model's best reconstruction"),
    QualityLevel("best", 1.5, "closest to the model's own reconstruction, largest files"),
)
#: The quality used when none is asked for.
DEFAULT_QUALITY = "balanced"


@dataclass(frozen=True)
class HighQualityLevel:
    """A quality level above a bundle's lossy levels, realized as near-lossless coding: every pixel
    within ``max_error`` levels of the input (runtime/nearlossless.py).

    Bundles list theirs in ``model.json`` under :data:`HIGH_QUALITY_KEY` (data the container
    fingerprint does not cover, so they can be added to shipped bundles); a container records
    its K, so decoding never reads this list.
    """

    name: str
    max_error: int
    description: str


#: The manifest key of a bundle's high-quality levels: a list of {"name", "max_error", "description"},
#: smallest files (largest K) first.
HIGH_QUALITY_KEY = "high_quality_levels"

#: High-quality levels written into a new bundle's manifest at export (the shipped bundles list
#: the same ladder with their own measured PSNRs in the descriptions): each halves K, about +5 dB.
HIGH_QUALITY_LEVELS: tuple[HighQualityLevel, ...] = tuple(
    HighQualityLevel(name, k, f"near-lossless: every pixel within {k} levels")
    for name, k in (("fine", 32), ("sharp", 16), ("crisp", 8), ("pristine", 4), ("archival", 2)))


def quality_levels(factors: Sequence[float] | None,
                      levels: Sequence[QualityLevel] = QUALITY_LEVELS) -> tuple[QualityLevel, ...]:
    """``levels`` (default: the standard ones) with other step factors (``None``: unchanged).

    A bundle whose posteriors are narrow for its decoder (a codec bundle trained with a
    distortion term) reaches its best PSNR with coarser steps; its export picks its own factors.
    ValueError unless there is one positive factor per level, strictly decreasing.
    """
    levels = tuple(levels)
    if factors is None:
        return levels
    values = [float(f) for f in factors]
    if len(values) != len(levels):
        raise ValueError(f"need {len(levels)} step factors (one per quality level: "
                         f"{', '.join(level.name for level in levels)}), got {len(values)}")
    if not all(math.isfinite(f) and f > 0 for f in values) or any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError("step factors must be positive and strictly decreasing (smallest files first)")
    return tuple(QualityLevel(level.name, f, level.description) for level, f in zip(levels, values))


def describe_levels(levels: Sequence[QualityLevel] = QUALITY_LEVELS, default: str = DEFAULT_QUALITY) -> str:
    """'smallest, small, balanced (default), high, best' for help texts."""
    return ", ".join(f"{q.name} (default)" if q.name == default else q.name for q in levels)
