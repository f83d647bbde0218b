"""The training loop: seeded, resumable, checkpointed every epoch.

A run folder holds ``config.json`` (what was asked), ``last.pt`` (the latest complete epoch,
written atomically so an interrupt never leaves a broken file), ``metrics.jsonl`` (one JSON
object per epoch) and, at the end, ``curve.png`` and ``samples.png``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgevae.runtime.errors import DataError, InputError
from edgevae.training.data import Dataset
from edgevae.training.model import UPSAMPLE_MODES, VAE, ModelConfig

CHECKPOINT = "last.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of a run (model sizes live in :class:`ModelConfig`)."""

    dataset: str = "fashion-mnist"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    min_lr_fraction: float = 0.02
    warmup_steps: int = 300
    beta: float = 1.0
    kl_warmup_epochs: float = 1.0
    free_bits: float = 0.0
    #: Pixel levels; > 0 adds the Gaussian NLL of the image around the decoder's mean image,
    #: SSE / (2 sigma^2). That term rewards latents that pin down the mean (PSNR) rather than
    #: the per-pixel spread the mixture likelihood alone is content to model: a codec bundle.
    distortion_sigma: float = 0.0
    grad_clip: float = 100.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def bits_per_dim(nats: torch.Tensor | float, dims: int) -> float:
    """Convert a per-image quantity in nats to bits per pixel dimension."""
    return float(nats) / (dims * math.log(2))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run_dir/last.pt``; raises InputError with a clear message if it is absent."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint (is {run_dir} a training run folder?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged pickle/zip
        raise InputError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None


def model_from_checkpoint(checkpoint: dict[str, Any]) -> VAE:
    """Rebuild the VAE of a checkpoint, weights loaded, in eval mode."""
    model = VAE(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


@torch.inference_mode()
def test_metrics(model: VAE, images: np.ndarray, batch_size: int = 1000) -> dict[str, float]:
    """Single-sample negative ELBO split into recon and KL (bits/dim), and recon PSNR (dB)."""
    from edgevae.training import likelihood

    model.eval()
    dims = model.config.pixels
    recon = kl = sq_err = 0.0
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size])
        terms = model.loss_terms(x)
        recon += float(terms.recon.sum())
        kl += float(terms.kl.sum())
        mean, _ = model.encoder(x)
        logits, means, _ = model.split(model.decoder(mean))
        pixels = likelihood.mean_pixels(logits, means).round()
        sq_err += float(((pixels - x.float()) ** 2).flatten(1).mean(1).clamp(min=1e-10).log10().sum())
    n = len(images)
    return {
        "test_nelbo_bpd": bits_per_dim((recon + kl) / n, dims),
        "test_recon_bpd": bits_per_dim(recon / n, dims),
        "test_kl_bpd": bits_per_dim(kl / n, dims),
        # Mean over images of per-image PSNR, as reported by the evaluate command.
        "test_psnr_db": 20 * math.log10(255.0) - 10 * sq_err / n,
    }


def _lr_factor(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_fraction + (1 - config.min_lr_fraction) * cosine


def train(
    data: Dataset,
    model_config: ModelConfig,
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: Callable[[int, str], Any] | None = None,
    log: Callable[[str], None] = print,
) -> VAE:
    """Train (or resume) a VAE on ``data``, writing checkpoints and metrics into ``run_dir``.

    ``progress(total_steps, label)`` must return a context manager yielding an object with
    ``update(n)`` and a writable ``loss`` text attribute; the CLI passes a click progress bar.
    """
    run = Path(run_dir)
    if data.image_shape != model_config.image_shape:
        raise DataError(f"data images are {data.image_shape}, the model is configured for {model_config.image_shape}")
    if resume:
        checkpoint = load_checkpoint(run)
        model_config = ModelConfig.from_dict(checkpoint["model_config"])
        config = TrainConfig(**checkpoint["train_config"])
        if checkpoint["data_fingerprint"] != data.fingerprint:
            raise DataError("the data differ from the data this run started with (fingerprint mismatch)")
    else:
        if (run / CHECKPOINT).exists():
            raise InputError(f"{run} already holds a run; pass --resume to continue it or pick another --out")
        run.mkdir(parents=True, exist_ok=True)
        checkpoint = None
        (run / CONFIG).write_text(
            json.dumps(
                {"model": model_config.to_dict(), "train": config.to_dict(), "data": data.name,
                 "data_fingerprint": data.fingerprint},
                indent=2,
            )
        )
        (run / METRICS).write_text("")

    torch.manual_seed(config.seed)
    model = VAE(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total_steps, config))
    start_epoch, step = 0, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch, step = checkpoint["epoch"], checkpoint["step"]
        torch.set_rng_state(checkpoint["torch_rng"])
        log(f"resuming {run} after epoch {start_epoch}")

    dims = model_config.pixels
    train_images = torch.from_numpy(data.train)
    kl_warmup_steps = max(1, int(config.kl_warmup_epochs * steps_per_epoch))
    for epoch in range(start_epoch, config.epochs):
        model.train()
        # Shuffle from (seed, epoch) so a resumed run sees the same order as an unbroken one.
        order = torch.from_numpy(np.random.default_rng([config.seed, epoch]).permutation(len(train_images)))
        started = time.time()
        running, total_loss, seen = None, 0.0, 0
        label = f"epoch {epoch + 1}/{config.epochs}"
        bar_cm = progress(steps_per_epoch, label) if progress else None
        bar = bar_cm.__enter__() if bar_cm else None
        try:
            for b in range(steps_per_epoch):
                x = train_images[order[b * config.batch_size : (b + 1) * config.batch_size]]
                terms = model.loss_terms(x)
                beta = config.beta * min(1.0, step / kl_warmup_steps)
                if config.free_bits > 0:
                    kl = terms.kl_per_dim.mean(0).clamp(min=config.free_bits).sum()
                else:
                    kl = terms.kl.mean()
                loss = terms.recon.mean() + beta * kl
                if config.distortion_sigma > 0:
                    loss = loss + terms.sse.mean() / (2 * config.distortion_sigma**2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                nelbo = bits_per_dim((terms.recon + terms.kl).mean().detach(), dims)
                running = nelbo if running is None else 0.98 * running + 0.02 * nelbo
                total_loss += nelbo * len(x)
                seen += len(x)
                if bar is not None:
                    bar.loss = f"nelbo {running:.3f} bpd  beta {beta:.2f}"
                    bar.update(1)
        finally:
            if bar_cm:
                bar_cm.__exit__(None, None, None)
        metrics = {"epoch": epoch + 1, "step": step, "train_nelbo_bpd": total_loss / seen,
                   "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - started, 1)}
        metrics.update(test_metrics(model, data.test))
        _atomic_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch + 1, "step": step, "torch_rng": torch.get_rng_state(),
             "model_config": model_config.to_dict(), "train_config": config.to_dict(),
             "data": data.name, "data_fingerprint": data.fingerprint, "metrics": metrics},
            run / CHECKPOINT,
        )
        with open(run / METRICS, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        log(
            f"epoch {epoch + 1}: train {metrics['train_nelbo_bpd']:.4f}  test nelbo {metrics['test_nelbo_bpd']:.4f} bpd "
            f"(recon {metrics['test_recon_bpd']:.4f} + kl {metrics['test_kl_bpd']:.4f})  "
            f"psnr {metrics['test_psnr_db']:.2f} dB  {metrics['seconds']}s"
        )
    return model.eval()


def train_command(checkpoint: dict[str, Any], run_dir: str = "RUN_DIR") -> str:
    """The one ``edgevae-train train`` command line that reproduces a checkpoint's run."""
    m, t = checkpoint["model_config"], checkpoint["train_config"]
    parts = [
        "edgevae-train train",
        f"--dataset {t['dataset']}",
        f"--latent-dim {m['latent_dim']}",
        f"--widths {','.join(str(w) for w in m['channels'])}",
        f"--res-blocks {m['res_blocks']}",
        f"--components {m['mixture_components']}",
        *([f"--upsample {m['upsample']}"] if m.get("upsample", UPSAMPLE_MODES[0]) != UPSAMPLE_MODES[0] else []),
        f"--epochs {t['epochs']}",
        f"--batch-size {t['batch_size']}",
        f"--lr {t['lr']:g}",
        f"--beta {t['beta']:g}",
        f"--kl-warmup-epochs {t['kl_warmup_epochs']:g}",
        f"--free-bits {t['free_bits']:g}",
        *([f"--distortion-sigma {t['distortion_sigma']:g}"] if t.get("distortion_sigma", 0) > 0 else []),
        f"--seed {t['seed']}",
    ]
    if t["dataset"] != "fashion-mnist":
        parts.append(f"--image-shape {','.join(str(d) for d in m['image_shape'])}")
    parts.append(f"--out {run_dir}")
    return " ".join(parts)
