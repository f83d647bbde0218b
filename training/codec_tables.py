"""The lossy codec's tables of a bundle: fit them with the bundle's own encoder, write codec.json.

Export calls :func:`write_codec_tables` for a new bundle, precision.py for an int8/fp16 variant
(the tables belong to the encoder that made them), and ``edgevae-train codec-tables`` calls
:func:`add_codec_tables` to add or refit them in place. The fitting itself is the runtime's
(:func:`edgevae.runtime.tables.fit_tables`), so the tables are made by the code that reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgevae.runtime import contract
from edgevae.runtime.bundle import read_bundle, sha256_file
from edgevae.runtime.container import TABLES_FILE
from edgevae.runtime.errors import BundleError, InputError
from edgevae.runtime.quality import QUALITY_LEVELS, QualityLevel, quality_levels
from edgevae.runtime.tables import bundle_levels, fit_tables


#: Images per encoder call while fitting the codec tables.
CODEC_FIT_BATCH = 256


def write_codec_tables(folder: Path, manifest: dict[str, Any], images: np.ndarray,
                       source: dict[str, Any] | None = None,
                       levels: Sequence[QualityLevel] = QUALITY_LEVELS) -> dict[str, Any]:
    """Fit the lossy codec's integer tables on ``images`` (uint8 (N, C, H, W), the training set)
    with ``folder``'s own encoder.onnx, write ``codec.json`` there and record its sha256 in
    ``manifest`` (which the caller then writes). Any bundle variant (int8, fp16) must call this
    with its own graphs in place: the tables belong to the encoder that made them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / contract.ENCODER.file), providers=["CPUExecutionProvider"])
    means, logvars = [], []
    for start in range(0, len(images), CODEC_FIT_BATCH):
        mean, logvar = session.run(None, {contract.ENCODER.inputs[0].name: images[start : start + CODEC_FIT_BATCH]})
        means.append(mean)
        logvars.append(logvar)
    tables = fit_tables(np.concatenate(means), np.concatenate(logvars), levels=levels, source=source)
    path = folder / TABLES_FILE
    path.write_text(json.dumps(tables, separators=(",", ":")) + "\n")
    manifest["codec"] = {"file": TABLES_FILE, "sha256": sha256_file(path),
                         "qualities": [q["name"] for q in tables["qualities"]],
                         "default_quality": tables["default_quality"]}
    return tables


def add_codec_tables(bundle_dir: str | Path, data_dir: str | Path | None = None,
                     step_factors: Sequence[float] | None = None) -> dict[str, Any]:
    """Fit (or refit) the codec tables of an existing bundle on its training data set.

    ``step_factors`` (one per quality level) default to the bundle's current ones, else the
    standard ones. The data set is the one recorded in the manifest; ``codec.json`` is written,
    then ``model.json`` is replaced atomically. Containers made with the old tables no longer
    decode (the bundle fingerprint covers the tables). Returns the tables.
    """
    from edgevae.runtime.outputs import atomic_write_bytes
    from edgevae.training.data import bundle_dataset

    bundle = read_bundle(bundle_dir)
    manifest = json.loads(json.dumps(bundle.manifest))  # a deep copy
    data = bundle_dataset(bundle, data_dir)
    try:
        own = bundle_levels(bundle)
    except BundleError:
        own = None  # unreadable old tables are being replaced: refit the standard levels
    try:
        levels = quality_levels(step_factors, own or QUALITY_LEVELS)
    except ValueError as e:
        raise InputError(str(e)) from None
    tables = write_codec_tables(bundle.path, manifest, data.train, source={"data": data.name, "split": "train"},
                                levels=levels)
    atomic_write_bytes(bundle.path / contract.MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode(), force=True)
    return tables
