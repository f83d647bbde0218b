"""Fit a bundle's novelty threshold on its training images and record it in model.json.

The scores come from :mod:`edgevae.runtime.novelty` (the runtime's own definition); this module
only picks the images, takes the percentile and rewrites the manifest atomically. Nothing the
codec uses changes, so the bundle's fingerprint and its containers stay valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgevae.runtime.bundle import read_bundle, update_manifest
from edgevae.runtime.errors import InputError
from edgevae.runtime.model import EdgeVAE
from edgevae.runtime.novelty import MANIFEST_KEY, fit_threshold


def add_novelty_threshold(bundle_dir: str | Path, data_dir: str | Path | None = None, percentile: float = 99.0,
                          count: int = 5000, samples: int = 4, seed: int = 0) -> dict[str, Any]:
    """Score ``count`` random training images of the bundle's data set, write the threshold at
    ``percentile`` into its model.json (key ``novelty``); returns that entry."""
    from edgevae.training.data import bundle_dataset

    if count < 10:
        raise InputError(f"need at least 10 training images for a percentile, got {count}")
    bundle = read_bundle(bundle_dir)
    data = bundle_dataset(bundle, data_dir)
    rng = np.random.default_rng(seed)
    images = data.train[np.sort(rng.choice(len(data.train), size=min(count, len(data.train)), replace=False))]
    entry = fit_threshold(EdgeVAE(bundle), images, percentile, samples=samples, seed=seed,
                          source={"data": data.name, "split": "train", "subset_seed": seed})
    update_manifest(bundle, {MANIFEST_KEY: entry})
    return entry
