"""Test-set evaluation: negative ELBO and IWAE bound in bits/dim, reconstruction PSNR.

For each image, k posterior samples z_i ~ q(z|x) give log weights
log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x). Then

    negative ELBO = -mean_i log w_i                       (Monte Carlo over the same k samples)
    IWAE bound    = -(logsumexp_i log w_i - log k)        (Burda et al. 2016; tighter)

both divided by (C * H * W * ln 2) to give bits per dimension. PSNR is that of the runtime's
``reconstruct``: decode the posterior mean, take the mixture-mean pixels rounded to uint8.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgevae.runtime.images import psnr
from edgevae.runtime.outputs import atomic_write_bytes
from edgevae.runtime.units import bits_per_dim
from edgevae.training.model import VAE
from edgevae.training.train import load_checkpoint, model_from_checkpoint

EVALUATION_FILE = "evaluation.json"


@torch.inference_mode()
def evaluate_model(
    model: VAE,
    images: np.ndarray,
    k: int = 64,
    batch_size: int = 500,
    seed: int = 0,
    progress: Callable[[int, str], Any] | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on uint8 ``images`` (N, C, H, W); see the module docstring."""
    if k < 1:
        raise ValueError("k must be >= 1")
    torch.manual_seed(seed)
    model.eval()
    dims = model.config.pixels
    nelbo = iwae = 0.0
    psnr_sum = 0.0
    started = time.time()
    bar_context = progress(len(images), f"evaluating (k={k})") if progress else contextlib.nullcontext()
    with bar_context as bar:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size])
            log_w = model.log_weights(x, k).double()
            nelbo -= float(log_w.mean(0).sum())
            iwae -= float((torch.logsumexp(log_w, 0) - math.log(k)).sum())
            mean, _ = model.encode(x)
            psnr_sum += float(psnr(model.mean_image(mean).numpy(), images[start : start + batch_size]).sum())
            if bar is not None:
                bar.update(len(x))
    n = len(images)
    return {
        "images": n,
        "k": k,
        "nelbo_bpd": bits_per_dim(nelbo, n * dims),
        "iwae_bpd": bits_per_dim(iwae, n * dims),
        "psnr_db": psnr_sum / n,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
    }


def evaluate_run(
    run_dir: str | Path,
    k: int = 64,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: Callable[[int, str], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a run's last checkpoint on its data set's test split; writes ``evaluation.json``.

    Only a full-test-set evaluation (no ``limit``) is written to the run folder, so export
    never copies partial figures into a manifest.
    """
    from edgevae.training.data import load_dataset

    checkpoint = load_checkpoint(run_dir)
    model = model_from_checkpoint(checkpoint)
    data = load_dataset(checkpoint["train_config"]["dataset"], model.config.image_shape, data_dir,
                        seed=checkpoint["train_config"].get("seed", 0))  # the split training held out
    images = data.test[:limit] if limit else data.test
    metrics = evaluate_model(model, images, k=k, seed=seed, progress=progress)
    metrics.update({"data": data.name, "split": "test", "epochs_trained": checkpoint["epoch"]})
    if not limit or limit >= len(data.test):
        atomic_write_bytes(Path(run_dir) / EVALUATION_FILE, (json.dumps(metrics, indent=2) + "\n").encode(), force=True)
    return metrics
