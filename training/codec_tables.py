"""The lossy codec's tables of a bundle: fit them with the bundle's own encoder, write codec.json.

Export calls :func:`write_codec_tables` for a new bundle, precision.py for an int8/fp16 variant
(the tables belong to the encoder that made them), and ``edgevae-train codec-tables`` calls
:func:`add_codec_tables` to add or refit them in place (codec.json and model.json replaced
together by :func:`edgevae.runtime.bundle.update_manifest`). The fitting itself is the runtime's
(:func:`edgevae.runtime.tables.fit_tables`), so the tables are made by the code that reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgevae.runtime import contract
from edgevae.runtime.bundle import read_bundle, sha256_bytes, update_manifest
from edgevae.runtime.container import TABLES_FILE
from edgevae.runtime.errors import BundleError, InputError
from edgevae.runtime.quality import QUALITY_LEVELS, QualityLevel, quality_levels
from edgevae.runtime.tables import bundle_levels, fit_tables


#: Images per encoder call while fitting the codec tables.
CODEC_FIT_BATCH = 256


def fit_codec_tables(folder: Path, images: np.ndarray, source: dict[str, Any] | None = None,
                     levels: Sequence[QualityLevel] = QUALITY_LEVELS) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """Fit the lossy codec's integer tables on ``images`` (uint8 (N, C, H, W), the training set)
    with ``folder``'s own encoder.onnx. Returns the tables, the bytes of ``codec.json`` and the
    manifest's ``codec`` entry for them (with their sha256). Any bundle variant (int8, fp16) must
    fit its own: the tables belong to the encoder that made them."""
    from edgevae.runtime.model import new_session

    session = new_session(folder / contract.ENCODER.file)
    means, logvars = [], []
    for start in range(0, len(images), CODEC_FIT_BATCH):
        mean, logvar = session.run(None, {contract.ENCODER.inputs[0].name: images[start : start + CODEC_FIT_BATCH]})
        means.append(mean)
        logvars.append(logvar)
    tables = fit_tables(np.concatenate(means), np.concatenate(logvars), levels=levels, source=source)
    data = (json.dumps(tables, separators=(",", ":")) + "\n").encode()
    entry = {"file": TABLES_FILE, "sha256": sha256_bytes(data),
             "qualities": [q["name"] for q in tables["qualities"]], "default_quality": tables["default_quality"]}
    return tables, data, entry


def write_codec_tables(folder: Path, manifest: dict[str, Any], images: np.ndarray,
                       source: dict[str, Any] | None = None,
                       levels: Sequence[QualityLevel] = QUALITY_LEVELS) -> dict[str, Any]:
    """:func:`fit_codec_tables` for a bundle being built in ``folder`` (a staging folder): writes
    ``codec.json`` there and records it in ``manifest`` (which the caller then writes)."""
    tables, data, entry = fit_codec_tables(folder, images, source, levels)
    (folder / TABLES_FILE).write_bytes(data)
    manifest["codec"] = entry
    return tables


def add_codec_tables(bundle_dir: str | Path, data_dir: str | Path | None = None,
                     step_factors: Sequence[float] | None = None) -> dict[str, Any]:
    """Fit (or refit) the codec tables of an existing bundle on its training data set.

    ``step_factors`` (one per quality level) default to the bundle's current ones, else the
    standard ones. The data set is the one recorded in the manifest; ``codec.json`` and
    ``model.json`` are replaced together, all or nothing (:func:`update_manifest`). Containers
    made with the old tables no longer decode (the bundle fingerprint covers the tables).
    Returns the tables.
    """
    from edgevae.training.data import bundle_dataset

    bundle = read_bundle(bundle_dir)
    data = bundle_dataset(bundle, data_dir)
    try:
        own = bundle_levels(bundle)
    except BundleError:
        own = None  # unreadable old tables are being replaced: refit the standard levels
    try:
        levels = quality_levels(step_factors, own or QUALITY_LEVELS)
    except ValueError as e:
        raise InputError(str(e)) from None
    tables, content, entry = fit_codec_tables(bundle.path, data.train, source={"data": data.name, "split": "train"},
                                              levels=levels)
    update_manifest(bundle, {"codec": entry}, files={TABLES_FILE: content})
    return tables
