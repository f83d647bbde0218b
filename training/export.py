"""Export a trained VAE as an edgevae bundle and prove it matches PyTorch.

Steps, each failing loudly (ExportError, nothing left in the output folder):

1. wrap encoder and decoder so the graphs take/return exactly the tensors of
   :mod:`edgevae.runtime.contract` (normalization and pixel units inside the graphs);
2. export each with the torch.export-based exporter (``dynamo=True``) and a dynamic batch
   axis, weights embedded in the one .onnx file;
3. stamp key facts into each file's ``metadata_props``; ``onnx.checker`` full check;
4. validate with ONNX Runtime like optimum does: names, then shapes, then values against
   PyTorch on real test images and random latents at several batch sizes, collecting the
   max abs difference per output;
5. write ``model.json`` with the sha256 of each file (validated against the manifest's schema,
   :mod:`edgevae.runtime.manifest`), then move the folder into place.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgevae.runtime import contract, manifest as schema
from edgevae.runtime.bundle import sha256_file
from edgevae.runtime.errors import ExportError, InputError
from edgevae.runtime.quality import HIGH_QUALITY_KEY, HIGH_QUALITY_LEVELS, QUALITY_LEVELS, QualityLevel, quality_levels
from edgevae.training.model import VAE
from edgevae.training.codec_tables import write_codec_tables
from edgevae.training.onnxgraph import EXAMPLE_BATCH, PARITY_BATCHES, export_graph, library_versions, metadata_props
from edgevae.training.staging import check_target, staged_bundle
from edgevae.training.evaluate import EVALUATION_FILE
from edgevae.training.train import load_checkpoint, model_from_checkpoint, train_command



class EncoderGraph(nn.Module):
    """uint8 images -> (mean, logvar), per the contract."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(images)


class DecoderGraph(nn.Module):
    """latents -> (uint8 mean pixels, mixture logits, means, log-scales), per the contract.

    Means and log-scales stay in the normalized domain (pixel v sits at v / 127.5 - 1): in
    pixel units float32 rounding alone (one ulp at 255 is 1.5e-5) would eat the parity budget.
    """

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, means, log_scales = self.model.decode_params(latents)
        return self.model.mean_pixels(logits, means), logits, means, log_scales


def check_parity(model: VAE, folder: Path, images: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch; returns the max abs difference per output."""
    from edgevae.runtime.model import new_session

    failures: list[str] = []
    diffs: dict[str, dict[str, float]] = {}
    dims = contract.dims_of(model.config.image_shape, model.config.latent_dim, model.config.mixture_components)
    rng = np.random.default_rng(seed)
    graphs = ((contract.ENCODER, EncoderGraph(model)), (contract.DECODER, DecoderGraph(model)))
    for spec, module in graphs:
        session = new_session(folder / spec.file)
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if names != (spec.input_names, spec.output_names):
            failures.append(f"{spec.file}: names {names} != contract {(spec.input_names, spec.output_names)}")
            continue
        diffs[spec.key] = {name: 0.0 for name in spec.output_names}
        for n in PARITY_BATCHES:
            if spec is contract.ENCODER:
                feed = images[rng.choice(len(images), size=n, replace=len(images) < n)]
            else:
                feed = rng.standard_normal((n, model.config.latent_dim)).astype(np.float32)
            got = session.run(None, {spec.inputs[0].name: feed})
            with torch.inference_mode():
                want = [t.numpy() for t in module(torch.from_numpy(feed))]
            for out_spec, g, w in zip(spec.outputs, got, want):
                shape = [n if d == contract.BATCH else d for d in out_spec.resolve(dims)]
                if list(g.shape) != shape or str(g.dtype) != out_spec.dtype:
                    failures.append(f"{spec.file}:{out_spec.name} at batch {n}: {g.dtype}{list(g.shape)}, "
                                    f"contract says {out_spec.dtype}{shape}")
                    continue
                diff = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))) if g.size else 0.0
                diffs[spec.key][out_spec.name] = max(diffs[spec.key][out_spec.name], diff)
        for out_spec in spec.outputs:
            diff = diffs[spec.key][out_spec.name]
            if not diff <= out_spec.tolerance:
                failures.append(f"{spec.file}:{out_spec.name}: max abs diff {diff:.3g} > {out_spec.tolerance:g}")
    if failures:
        raise ExportError("export validation failed: " + "; ".join(failures))
    return {"tolerance": contract.PARITY_TOLERANCE, "batch_sizes": list(PARITY_BATCHES),
            "inputs": "real test images (encoder), N(0, I) latents (decoder)", "max_abs_diff": diffs}


def build_manifest(checkpoint: dict[str, Any], evaluation: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """Manifest of a bundle (the schema of :mod:`edgevae.runtime.manifest`), without file hashes and
    parity (filled in after export); :func:`edgevae.runtime.manifest.to_json` validates it when written."""
    config = checkpoint["model_config"]
    dims = contract.dims_of(config["image_shape"], config["latent_dim"], config["mixture_components"])
    return {
        "format": contract.MANIFEST_FORMAT,
        "format_version": contract.MANIFEST_VERSION,
        "name": name,
        "precision": "fp32",
        "image": {"shape": list(config["image_shape"]), "layout": "NCHW", "dtype": "uint8", "pixel_range": [0, 255]},
        "latent": {"dim": config["latent_dim"], "prior": "standard normal N(0, I)"},
        "likelihood": {"kind": contract.LIKELIHOOD_KIND, "components": config["mixture_components"],
                       "domain": contract.LIKELIHOOD_DOMAIN},
        "graphs": {spec.key: spec.describe(dims) for spec in contract.GRAPHS},
        "opset": contract.OPSET,
        "training": {
            "command": train_command(checkpoint),
            "model_config": config,
            "train_config": checkpoint["train_config"],
            "epochs_trained": checkpoint["epoch"],
            "data": checkpoint["data"],
            "data_fingerprint": checkpoint["data_fingerprint"],
            "last_epoch_metrics": checkpoint.get("metrics", {}),
        },
        "evaluation": evaluation,
        HIGH_QUALITY_KEY: [dataclasses.asdict(level) for level in HIGH_QUALITY_LEVELS],
        "versions": library_versions(),
    }


def export_model(model: VAE, checkpoint: dict[str, Any], bundle_dir: str | Path, images: np.ndarray,
                 evaluation: dict[str, Any] | None = None, force: bool = False,
                 codec_images: np.ndarray | None = None,
                 levels: Sequence[QualityLevel] = QUALITY_LEVELS) -> dict[str, Any]:
    """Export ``model`` into ``bundle_dir``; validation images are uint8 (N, C, H, W).

    The codec tables (quality ``levels``) are fitted on ``codec_images`` (the training set;
    default: ``images``).
    """
    target = Path(bundle_dir)
    check_target(target, force)
    manifest = build_manifest(checkpoint, evaluation, name=target.name)
    props = metadata_props(manifest)
    with staged_bundle(target, force) as staging:
        c, h, w = model.config.image_shape
        examples = {
            contract.ENCODER.key: torch.zeros(EXAMPLE_BATCH, c, h, w, dtype=torch.uint8),
            contract.DECODER.key: torch.zeros(EXAMPLE_BATCH, model.config.latent_dim),
        }
        for spec, module in ((contract.ENCODER, EncoderGraph(model)), (contract.DECODER, DecoderGraph(model))):
            export_graph(module, examples[spec.key], spec, staging / spec.file, props)
            manifest["graphs"][spec.key]["sha256"] = sha256_file(staging / spec.file)
        manifest["parity"] = check_parity(model, staging, images)
        write_codec_tables(staging, manifest, images if codec_images is None else codec_images,
                           source={"data": checkpoint["data"], "split": "train" if codec_images is not None else "test"},
                           levels=levels)
        (staging / contract.MANIFEST_FILE).write_bytes(schema.to_json(manifest, target / contract.MANIFEST_FILE))
    return manifest


def export_run(run_dir: str | Path, bundle_dir: str | Path, data_dir: str | Path | None = None,
               force: bool = False, precision: str = "fp32",
               step_factors: Sequence[float] | None = None) -> dict[str, Any]:
    """Export the last checkpoint of a run, with its evaluation (if run) in the manifest.

    ``step_factors`` set the codec's quality levels (see :func:`edgevae.runtime.quality.quality_levels`).

    ``precision`` int8 or fp16 exports and checks fp32 first, then converts it with
    :mod:`edgevae.training.precision` (int8 calibrated on the run's training images).
    """
    from edgevae.training.data import load_dataset
    from edgevae.training.precision import check_precision, export_variant

    check_precision(precision)
    try:
        levels = quality_levels(step_factors)
    except ValueError as e:
        raise InputError(str(e)) from None
    run = Path(run_dir)
    checkpoint = load_checkpoint(run)
    model = model_from_checkpoint(checkpoint)
    evaluation_path = run / EVALUATION_FILE
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else None
    data = load_dataset(checkpoint["train_config"]["dataset"], model.config.image_shape, data_dir,
                        seed=checkpoint["train_config"].get("seed", 0))  # the split training held out
    if precision != "fp32":
        return export_variant(lambda folder: export_model(model, checkpoint, folder, data.test, evaluation=evaluation,
                                                          codec_images=data.train, levels=levels),
                              bundle_dir, precision, data.train, data.test, force=force)
    return export_model(model, checkpoint, bundle_dir, data.test, evaluation=evaluation, force=force,
                        codec_images=data.train, levels=levels)
