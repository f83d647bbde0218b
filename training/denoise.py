"""Train a noise-robust encoder for a shipped bundle's frozen decoder, and export it as a new bundle.

    clean x --corrupt (random Gaussian sigma or salt-and-pepper)--> y
    y --new encoder--> q(z | y) --z--> frozen decoder --> p(x | z)
    loss = -log p(x | z) + KL(q(z | y) || N(0, I))       (the ELBO of the CLEAN image under q(z | y))

The decoder and its weights stay exactly those of the source bundle (its decoder.onnx is
copied byte for byte), so the new bundle's p(x | z) and its likelihood are the source's; only
q(z | y) changes. The encoder starts from the source encoder. Weights are read from the
source bundle's ONNX initializers (the exporter keeps the PyTorch parameter names), so no
training run folder is needed. The noise is drawn by :func:`edgevae.runtime.noise.corrupt`,
the same definition the runtime and the benchmark use.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgevae.runtime import contract, manifest as schema
from edgevae.runtime.bundle import read_bundle, sha256_file
from edgevae.runtime.errors import InputError, OutputError
from edgevae.runtime.images import psnr
from edgevae.runtime.noise import GAUSSIAN, SALT_PEPPER, corrupt
from edgevae.runtime.units import bits_per_dim
from edgevae.training.model import VAE, ModelConfig, gaussian_kl
from edgevae.training.train import save_checkpoint

CHECKPOINT = "last.pt"
METRICS = "metrics.jsonl"
#: Test images and noise level of the per-epoch check.
CHECK_IMAGES = 1000
CHECK_SIGMA = 50.0


@dataclass(frozen=True)
class DenoiseConfig:
    """How the encoder is trained: the noise it sees and the optimisation."""

    source: str = "fashion-mnist"
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    #: Gaussian sigma is drawn uniformly from [0, sigma_max] pixel levels.
    sigma_max: float = 100.0
    #: Fraction of each batch corrupted by salt-and-pepper instead (fraction ~ U[0, salt_pepper_max]).
    salt_pepper_share: float = 0.25
    salt_pepper_max: float = 0.3
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def command(self, run_dir: str = "RUN_DIR") -> str:
        """The ``edgevae-train denoise-train`` command line that reproduces this run."""
        return (f"edgevae-train denoise-train --from {self.source} --epochs {self.epochs} "
                f"--batch-size {self.batch_size} --lr {self.lr:g} --sigma-max {self.sigma_max:g} "
                f"--salt-pepper-share {self.salt_pepper_share:g} --salt-pepper-max {self.salt_pepper_max:g} "
                f"--seed {self.seed} --out {run_dir}")


def load_bundle_vae(source: str | os.PathLike[str]) -> tuple[VAE, dict[str, Any]]:
    """The PyTorch VAE of a bundle, weights read from its ONNX initializers; and its manifest."""
    import onnx
    from onnx import numpy_helper

    bundle = read_bundle(source)
    config = bundle.manifest.get("training", {}).get("model_config")
    if bundle.precision != "fp32" or config is None:
        raise InputError(f"{bundle.path}: needs an fp32 bundle whose model.json records its model_config")
    model = VAE(ModelConfig.from_dict(config))
    for spec, module, prefix in ((contract.ENCODER, model.encoder, "encoder."),
                                 (contract.DECODER, model.decoder, "model.decoder.")):
        graph = onnx.load(str(bundle.graph_path(spec)))
        weights = {i.name[len(prefix):]: torch.from_numpy(numpy_helper.to_array(i).copy())
                   for i in graph.graph.initializer if i.name.startswith(prefix)}
        missing = set(module.state_dict()) - set(weights)
        if missing:
            raise InputError(f"{spec.file}: no weights for {sorted(missing)[:3]} (not an edgevae export?)")
        module.load_state_dict({k: weights[k] for k in module.state_dict()})
    return model.eval(), bundle.manifest


def corrupt_batch(images: np.ndarray, config: DenoiseConfig, rng: np.random.Generator) -> np.ndarray:
    """Each image corrupted by Gaussian noise of random sigma, or (a ``salt_pepper_share`` of them)
    by salt-and-pepper of random fraction."""
    n = len(images)
    out = corrupt(images, GAUSSIAN, rng.uniform(0, config.sigma_max, n), rng)
    sp = rng.random(n) < config.salt_pepper_share
    if sp.any():
        out[sp] = corrupt(images[sp], SALT_PEPPER, rng.uniform(0, config.salt_pepper_max, int(sp.sum())), rng)
    return out


def _elbo_terms(model: VAE, clean: torch.Tensor, noisy: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    mean, logvar = model.encoder(noisy)
    z = model.reparameterize(mean, logvar) if sample else mean
    kl = gaussian_kl(mean, logvar).sum(1)
    return model.recon_nll(clean, z), kl


@torch.inference_mode()
def check(model: VAE, test: np.ndarray, seed: int = 1) -> dict[str, float]:
    """Negative ELBO (bits/dim) of clean test images under q(z | y) at sigma CHECK_SIGMA, and the
    PSNR of the decoder's mean image at the posterior mean (a quick proxy, not the denoiser)."""
    rng = np.random.default_rng(seed)
    clean = test[:CHECK_IMAGES]
    noisy = corrupt(clean, GAUSSIAN, CHECK_SIGMA, rng)
    x, y = torch.from_numpy(clean), torch.from_numpy(noisy)
    recon, kl = _elbo_terms(model, x, y)
    mean, _ = model.encoder(y)
    return {"check_sigma": CHECK_SIGMA,
            "check_nelbo_bpd": bits_per_dim(float((recon + kl).mean()), model.config.pixels),
            "check_mean_image_psnr_db": float(psnr(clean, model.mean_image(mean).numpy()).mean())}


def train_encoder(train: np.ndarray, test: np.ndarray, config: DenoiseConfig, run_dir: str | Path,
                  log: Callable[[str], None] = print) -> VAE:
    """Train the source bundle's encoder on corrupted ``train`` images (uint8 (N, C, H, W)),
    decoder frozen; checkpoint every epoch into ``run_dir``."""
    run = Path(run_dir)
    if (run / CHECKPOINT).exists():
        raise OutputError(f"{run} already holds a run; pick another --out")
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model, _ = load_bundle_vae(config.source)
    for p in model.decoder.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(model.encoder.parameters(), lr=config.lr)
    steps_per_epoch = len(train) // config.batch_size
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    dims = model.config.pixels
    log(f"start: {json.dumps(check(model, test))}")
    started = time.time()
    for epoch in range(config.epochs):
        model.encoder.train()
        order = rng.permutation(len(train))
        running = None
        for step in range(steps_per_epoch):
            clean = train[order[step * config.batch_size : (step + 1) * config.batch_size]]
            noisy = corrupt_batch(clean, config, rng)
            recon, kl = _elbo_terms(model, torch.from_numpy(clean), torch.from_numpy(noisy))
            loss = (recon + kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bpd = bits_per_dim(float(loss.detach()), dims)
            running = bpd if running is None else 0.98 * running + 0.02 * bpd
            if step % 100 == 0:
                log(f"epoch {epoch + 1} step {step}/{steps_per_epoch}: nelbo(clean | noisy) {running:.4f} bpd "
                    f"{time.time() - started:.0f}s")
        model.encoder.eval()
        metrics = {"epoch": epoch + 1, "train_nelbo_bpd": running, "seconds": round(time.time() - started, 1),
                   **check(model, test)}
        save_checkpoint({"encoder": model.encoder.state_dict(), "config": config.to_dict(), "epoch": epoch + 1,
                         "metrics": metrics}, run / CHECKPOINT)
        with open(run / METRICS, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        log(f"epoch {epoch + 1}: {json.dumps(metrics)}")
    return model.eval()


def export_denoise_bundle(run_dir: str | Path, bundle_dir: str | Path, test: np.ndarray | None = None,
                          force: bool = False, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Write a bundle: the run's encoder (exported and parity-checked like any bundle) and the
    source bundle's decoder.onnx copied unchanged. It has no codec tables: it is not for coding.
    The parity check runs on ``test`` images (default: the source bundle's test split)."""
    from edgevae.training.export import EncoderGraph, check_parity
    from edgevae.training.staging import check_target, staged_bundle
    from edgevae.training.onnxgraph import EXAMPLE_BATCH, export_graph, library_versions, metadata_props

    run = Path(run_dir)
    if not (run / CHECKPOINT).is_file():
        raise InputError(f"{run / CHECKPOINT}: no checkpoint (is {run} a denoise-train run folder?)")
    checkpoint = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    config = DenoiseConfig(**checkpoint["config"])
    model, source_manifest = load_bundle_vae(config.source)
    model.encoder.load_state_dict(checkpoint["encoder"])
    model.eval()
    source = read_bundle(config.source)
    if test is None:
        from edgevae.training.data import bundle_dataset

        test = bundle_dataset(source, data_dir).test
    target = Path(bundle_dir)
    check_target(target, force)
    manifest = json.loads(json.dumps(source_manifest))
    for key in ("codec", "evaluation", "parity", "novelty", "role"):  # facts about the source's encoder, codec or jobs
        manifest.pop(key, None)
    manifest["versions"] = library_versions()
    manifest["name"] = target.name
    manifest["training"] = {
        "command": config.command(),
        "then": f"edgevae-train denoise-export RUN_DIR {target.name}",
        "kind": "denoising encoder for a frozen decoder",
        "source_bundle": source.name,
        "source_training": source_manifest.get("training", {}).get("command"),
        "model_config": source_manifest["training"]["model_config"],
        "denoise_config": config.to_dict(),
        "epochs_trained": checkpoint["epoch"],
        "checkpoint": f"last.pt after epoch {checkpoint['epoch']} of the {config.epochs}-epoch schedule",
        "last_epoch_metrics": checkpoint["metrics"],
        "decoder": f"decoder.onnx of {source.name}, byte for byte (sha256 unchanged)",
    }
    with staged_bundle(target, force) as staging:
        c, h, w = model.config.image_shape
        export_graph(EncoderGraph(model), torch.zeros(EXAMPLE_BATCH, c, h, w, dtype=torch.uint8), contract.ENCODER,
                     staging / contract.ENCODER.file, metadata_props(manifest))
        shutil.copyfile(source.graph_path(contract.DECODER), staging / contract.DECODER.file)
        for spec in contract.GRAPHS:
            manifest["graphs"][spec.key]["sha256"] = sha256_file(staging / spec.file)
        manifest["parity"] = check_parity(model, staging, test)
        (staging / contract.MANIFEST_FILE).write_bytes(schema.to_json(manifest, target / contract.MANIFEST_FILE))
    return manifest
