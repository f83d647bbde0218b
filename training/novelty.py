"""Fit a bundle's novelty threshold on its training images and record it in model.json.

The scores come from :mod:`edgevae.runtime.novelty` (the runtime's own definition); this module
only picks the images, takes the percentile and rewrites the manifest atomically. Nothing the
codec uses changes, so the bundle's fingerprint and its containers stay valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgevae.runtime import contract
from edgevae.runtime.bundle import read_bundle
from edgevae.runtime.errors import InputError
from edgevae.runtime.model import EdgeVAE
from edgevae.runtime.novelty import MANIFEST_KEY, fit_threshold
from edgevae.runtime.outputs import atomic_write_bytes


def add_novelty_threshold(bundle_dir: str | Path, data_dir: str | Path | None = None, percentile: float = 99.0,
                          count: int = 5000, samples: int = 4, seed: int = 0) -> dict[str, Any]:
    """Score ``count`` random training images of the bundle's data set, write the threshold at
    ``percentile`` into its model.json (key ``novelty``); returns that entry."""
    from edgevae.training.data import bundle_dataset

    if count < 10:
        raise InputError(f"need at least 10 training images for a percentile, got {count}")
    bundle = read_bundle(bundle_dir)
    manifest = json.loads(json.dumps(bundle.manifest))
    data = bundle_dataset(bundle, data_dir)
    rng = np.random.default_rng(seed)
    images = data.train[np.sort(rng.choice(len(data.train), size=min(count, len(data.train)), replace=False))]
    entry = fit_threshold(EdgeVAE(bundle), images, percentile, samples=samples, seed=seed,
                          source={"data": data.name, "split": "train", "subset_seed": seed})
    manifest[MANIFEST_KEY] = entry
    atomic_write_bytes(bundle.path / contract.MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode(), force=True)
    return entry
