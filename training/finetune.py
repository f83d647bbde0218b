"""The resumable fine-tuning loop of runs that start from a shipped bundle (integer_run.py: the
integer network; context.py: a context net), one definition for both:

    open_run: a new run folder, or the checkpoint of the one to --resume
    schedule: Adam's learning rate on a cosine from the peak to 2%, rebuilt at the resumed step
    train_epochs: shuffled batches, a loss per batch, gradient clipping, a progress bar or a log
                  line every 50 steps; after each epoch the test metrics and an atomic checkpoint
                  (model, optimizer, config, metrics, both random generators), so a resumed run
                  ends with the weights of an uninterrupted one

What differs between runs (the loss, the evaluation, what a metrics line records) is passed in.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from edgevae.runtime.errors import InputError, OutputError
from edgevae.runtime.units import bits_per_dim
from edgevae.training.train import CHECKPOINT, METRICS, save_checkpoint

#: Gradient-norm clip of every fine-tuning step (the losses are sums over 784 pixels, in nats).
CLIP_NORM = 100.0
#: Steps between log lines when no progress bar is shown (nohup runs are polled).
LOG_EVERY = 50
#: Test images per evaluation batch of a fine-tuned network.
EVAL_BATCH = 500
#: Seed of the evaluation's posterior noise: every epoch (and the export) draws the same z, one per test image.
EVAL_SEED = 0


def open_run(run_dir: str | Path, resume: bool) -> dict[str, Any] | None:
    """Create RUN_DIR for a new run (OutputError if it already holds one), or with ``resume``
    return its last checkpoint (InputError if there is none)."""
    run = Path(run_dir)
    if resume:
        if not (run / CHECKPOINT).is_file():
            raise InputError(f"{run / CHECKPOINT}: nothing to resume")
        return torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    if (run / CHECKPOINT).exists():
        raise OutputError(f"{run} already holds a run; pass --resume or pick another --out")
    run.mkdir(parents=True, exist_ok=True)
    return None


def restore(checkpoint: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            rng: np.random.Generator) -> dict[str, Any]:
    """Put a checkpoint's weights, optimizer state and random generators back; its metrics."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    rng.bit_generator.state = checkpoint["rng"]
    torch.set_rng_state(checkpoint["torch_rng"])
    return checkpoint["metrics"]


def save(run: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: Any, metrics: dict[str, Any],
         rng: np.random.Generator, started: float) -> None:
    """Checkpoint (atomically) and append the metrics line; ``metrics['seconds']`` is set here."""
    metrics["seconds"] = round(time.time() - started, 1) if metrics["epoch"] else 0.0
    save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": asdict(config),
                     "metrics": metrics, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                     "epoch": metrics["epoch"]}, run / CHECKPOINT)
    with open(run / METRICS, "a") as f:
        f.write(json.dumps(metrics) + "\n")


def train_epochs(run: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: Any,
                 images: np.ndarray, rng: np.random.Generator, metrics: dict[str, Any],
                 loss: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 evaluate: Callable[[], dict[str, Any]], clipped: Iterable[torch.nn.Parameter],
                 running_key: str, extra: dict[str, Any] | None = None, label: str = "loss",
                 before_epoch: Callable[[], Any] | None = None, stop_after: int | None = None,
                 progress: Callable[[int, str], Any] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train from the epoch after ``metrics['epoch']`` to ``config.epochs`` (or ``stop_after``) on
    ``images`` (uint8 (N, C, H, W)) in ``config.batch_size`` batches.

    ``loss(x)`` gives (the loss to minimise, the bits/dim figure to report) of a batch; ``evaluate()``
    the test metrics of an epoch; each metrics line is {epoch, **extra, running_key: the reported
    figure's running mean, lr, **evaluate(), seconds}. Returns the last line."""
    clipped = list(clipped)
    steps_per_epoch = len(images) // config.batch_size
    total = max(1, steps_per_epoch * config.epochs)
    start_epoch = metrics["epoch"]
    started = time.time() - metrics["seconds"]
    done = start_epoch * steps_per_epoch  # the scheduler is rebuilt, not saved: same step, same LR
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s + done) / total))))
    dims = int(np.prod(images.shape[1:]))
    for epoch in range(start_epoch, min(config.epochs, stop_after or config.epochs)):
        model.train()
        if before_epoch is not None:
            before_epoch()
        order = rng.permutation(len(images))
        running = None
        bar_cm = progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}") if progress else contextlib.nullcontext()
        with bar_cm as bar:
            for step in range(steps_per_epoch):
                x = torch.from_numpy(images[order[step * config.batch_size : (step + 1) * config.batch_size]])
                objective, reported = loss(x)
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                torch.nn.utils.clip_grad_norm_(clipped, CLIP_NORM)
                optimizer.step()
                schedule.step()
                bpd = bits_per_dim(float(reported.detach()), dims)
                running = bpd if running is None else 0.98 * running + 0.02 * bpd
                if bar is not None:
                    bar.loss = f"{label} {running:.4f} bits/dim"
                    bar.update(1)
                elif step % LOG_EVERY == 0:
                    log(f"epoch {epoch + 1} step {step}/{steps_per_epoch}: {label} {running:.4f} bits/dim "
                        f"{time.time() - started:.0f}s")
        metrics = {"epoch": epoch + 1, **(extra or {}), running_key: running, "lr": optimizer.param_groups[0]["lr"],
                   **evaluate()}
        save(run, model, optimizer, config, metrics, rng, started)
        log(f"epoch {epoch + 1}: {json.dumps(metrics)}")
    return metrics
