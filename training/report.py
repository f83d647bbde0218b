"""Figures of a training run: the training curve and a grid of prior samples."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edgevae.runtime.images import grid, to_pil
from edgevae.training.model import VAE
from edgevae.training.train import METRICS


def write_curve(run_dir: str | Path) -> Path:
    """Plot train and test negative ELBO (bits/dim) per epoch into ``run_dir/curve.png``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    rows = [json.loads(line) for line in (run / METRICS).read_text().splitlines() if line.strip()]
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [r["train_nelbo_bpd"] for r in rows], marker="o", label="train (running)")
    ax.plot(epochs, [r["test_nelbo_bpd"] for r in rows], marker="o", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO (bits/dim)")
    ax.set_title(run.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run / "curve.png"
    fig.savefig(out)
    plt.close(fig)
    return out


@torch.inference_mode()
def write_samples(model: VAE, run_dir: str | Path, n: int = 64, seed: int = 0) -> Path:
    """Decode ``n`` latents drawn from N(0, I) and save the mixture-mean pixels as a grid."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.config.latent_dim, generator=generator)
    pixels = model.mean_image(z).numpy()
    out = Path(run_dir) / "samples.png"
    to_pil(grid(pixels)).save(out)
    return out


def write_run_figures(model: VAE, run_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Both figures of a finished run."""
    return write_curve(run_dir), write_samples(model, run_dir, seed=seed)
