"""The training loop: seeded, resumable, checkpointed every epoch, on one or several processes.

A run folder holds ``config.json`` (what was asked), ``last.pt`` (the latest complete epoch,
written atomically so an interrupt never leaves a broken file), ``metrics.jsonl`` (one JSON
object per epoch) and, at the end, ``curve.png`` and ``samples.png``.

On several processes (torchrun, see ``distributed.py``) the run is the same one, up to float
rounding, whatever their number: ``batch_size`` is the global batch; every epoch's shuffle and
every batch's reparameterization noise are drawn whole from the seed and each rank takes its
contiguous share; each rank's loss is scaled so that DDP's average of the gradients is the
gradient of the global batch's mean. A single process draws exactly the random numbers it drew
before any of this existed, so old runs stay reproducible by their recorded commands.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch
from torch import nn

from edgevae.runtime.errors import DataError, InputError
from edgevae.runtime.images import psnr
from edgevae.runtime.outputs import atomic_write_bytes
from edgevae.runtime.units import bits_per_dim
from edgevae.training.data import Dataset, ImageFiles, ImageFolder, stream_batches
from edgevae.training.distributed import Context, raise_if_stopped
from edgevae.training.model import UPSAMPLE_MODES, VAE, LossTerms, ModelConfig

#: What :func:`train` learns from: arrays in memory, or a folder streamed from disk.
TrainingData = Union[Dataset, ImageFolder]

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


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """``torch.save`` of ``obj`` to ``path``, replacing it all or nothing by the runtime's writer
    (:func:`edgevae.runtime.outputs.atomic_write_bytes`): ``path`` is always a complete file (the
    old one or the new one), and an interrupt (Ctrl-C, torchrun's SIGTERM) leaves no temporary
    behind. The checkpoint is serialized in memory first (a few MB)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), force=True)


def check_run_folder(run_dir: str | Path, resume: bool) -> None:
    """Raise InputError unless ``run_dir`` can start a run (no checkpoint yet) or be resumed (one)."""
    path = Path(run_dir) / CHECKPOINT
    if resume and not path.is_file():
        raise InputError(f"{path}: no checkpoint (is {run_dir} a training run folder?)")
    if not resume and path.exists():
        raise InputError(f"{run_dir} already holds a run; pass --resume to continue it or pick another --out")


def on_rank_0(context: Context, task: Callable[[], Any]) -> Any:
    """``task()`` run by rank 0 alone (it alone reads and writes the run folder, which other
    machines may not see); every rank returns its result or raises its DataError/InputError,
    so that all ranks start or stop together."""
    outcome: tuple[str, Any] = ("ok", None)
    if context.is_main:
        try:
            outcome = ("ok", task())
        except (DataError, InputError) as e:
            outcome = ("error", e)
    outcome = context.broadcast(outcome)
    if outcome[0] == "error":
        error = outcome[1]
        error.from_rank_0 = not context.is_main  # rank 0 reports it; the others need not repeat it
        raise error
    return outcome[1]


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run_dir/last.pt``; raises InputError with a clear message if it is absent."""
    path = Path(run_dir) / CHECKPOINT
    check_run_folder(run_dir, resume=True)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged pickle/zip
        raise InputError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None


def run_settings(run_dir: str | Path) -> tuple[TrainConfig, ModelConfig]:
    """The training and model settings a run was started with (from its checkpoint)."""
    checkpoint = load_checkpoint(run_dir)
    return TrainConfig(**checkpoint["train_config"]), ModelConfig.from_dict(checkpoint["model_config"])


def model_from_checkpoint(checkpoint: dict[str, Any]) -> VAE:
    """Rebuild the VAE of a checkpoint, weights loaded, in eval mode."""
    model = VAE(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


#: Test images per evaluation step (a global batch, shared out like a training batch).
EVAL_BATCH = 1000


class _Objective(nn.Module):
    """The VAE's loss terms as a module's forward, the call DistributedDataParallel wraps."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, eps: torch.Tensor) -> LossTerms:
        return self.vae.loss_terms(images, eps)


def _global_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _read_batches(images: np.ndarray | ImageFiles, batches: list[np.ndarray], context: Context, workers: int,
                  log: Callable[[str], None]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """For each global batch (indices into ``images``): its size, this rank's share of its images,
    and the rows of the share that were read (None: all of them; a file may vanish mid-run)."""
    if isinstance(images, np.ndarray):
        tensor = torch.from_numpy(images)
        for batch in batches:
            start, stop = context.share(len(batch))
            yield len(batch), tensor[torch.from_numpy(batch[start:stop])], None
        return
    shares = []
    for batch in batches:
        start, stop = context.share(len(batch))
        shares.append([(row, int(index)) for row, index in enumerate(batch[start:stop])])
    for batch, (rows, x, bad) in zip(batches, stream_batches(images, shares, workers)):
        for _, message in bad:
            log(f"skipping {message}")
        yield len(batch), x, (torch.tensor(rows, dtype=torch.long) if bad else None)


def _share_of_noise(n: int, latent_dim: int, context: Context, rows: torch.Tensor | None) -> torch.Tensor:
    """This rank's rows of the batch's reparameterization noise.

    Every rank draws the noise of the whole global batch from the same generator and keeps its
    share, so an image meets the same noise at any world size, and every generator stays in
    step. One process draws exactly what ``randn_like`` drew before, which keeps old runs
    reproducible by their recorded commands.
    """
    eps = torch.randn(n, latent_dim)
    start, stop = context.share(n)
    eps = eps[start:stop]
    return eps if rows is None else eps[rows]


@torch.inference_mode()
def test_metrics(model: VAE, images: np.ndarray | ImageFiles, batch_size: int = EVAL_BATCH,
                 context: Context | None = None, workers: int = 0,
                 log: Callable[[str], None] = print) -> dict[str, float]:
    """Single-sample negative ELBO split into recon and KL (bits/dim), and recon PSNR (dB).

    Each rank scores its share of every batch of ``batch_size`` test images; the sums are
    reduced over ranks, so the figures are those of the whole test set.
    """
    context = context or Context()
    model.eval()
    dims = model.config.pixels
    recon = kl = psnr_sum = 0.0
    n = 0
    order = np.arange(len(images))
    for size, x, rows in _read_batches(images, _global_batches(order, batch_size), context, workers, log):
        eps = _share_of_noise(size, model.config.latent_dim, context, rows).to(context.device)
        if not len(x):
            continue  # a share can be empty when a batch has fewer images than there are ranks
        x = x.to(context.device)
        terms = model.loss_terms(x, eps)
        recon += float(terms.recon.sum())
        kl += float(terms.kl.sum())
        mean, _ = model.encode(x)
        psnr_sum += float(psnr(model.mean_image(mean).cpu().numpy(), x.cpu().numpy()).sum())
        n += len(x)
    recon, kl, psnr_sum, n = context.all_reduce_sum(
        torch.tensor([recon, kl, psnr_sum, n], dtype=torch.float64)).tolist()
    return {
        "test_nelbo_bpd": bits_per_dim((recon + kl) / n, dims),
        "test_recon_bpd": bits_per_dim(recon / n, dims),
        "test_kl_bpd": bits_per_dim(kl / n, dims),
        # Mean over images of per-image PSNR, as reported by the evaluate command.
        "test_psnr_db": psnr_sum / n,
    }


def _lr_factor(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_fraction + (1 - config.min_lr_fraction) * cosine


def batch_loss(terms: LossTerms, batch: int, beta: float, config: TrainConfig, context: Context,
               weight: float = 1.0) -> torch.Tensor:
    """This rank's loss, such that DDP's average of the ranks' gradients is the gradient of the
    global batch's mean loss, whatever the share sizes (the last batch is smaller; shares differ
    by one image; a share may be empty).

    Each per-image term is summed over the share and scaled by ``world_size / batch``. Free bits
    clamp the batch mean of each latent dimension's KL, so that mean is summed over ranks first
    and the clamp's gradient mask (mean >= free bits) applied to the local sums. A process that
    holds the whole batch computes the plain means, as before. ``weight=0`` marks the stand-in
    image of an empty share (it only keeps the rank in DDP's gradient reduction).
    """
    if context.world_size == 1 and len(terms.recon) == batch:
        if config.free_bits > 0:
            kl = terms.kl_per_dim.mean(0).clamp(min=config.free_bits).sum()
        else:
            kl = terms.kl.mean()
        loss = terms.recon.mean() + beta * kl
        if config.distortion_sigma > 0:
            loss = loss + terms.sse.mean() / (2 * config.distortion_sigma**2)
        return loss
    if config.free_bits > 0:
        sums = terms.kl_per_dim.sum(0) * weight
        active = context.all_reduce_sum(sums.detach()) / batch >= config.free_bits
        kl = (sums * active).sum()
    else:
        kl = terms.kl.sum()
    loss = terms.recon.sum() + beta * kl
    if config.distortion_sigma > 0:
        loss = loss + terms.sse.sum() / (2 * config.distortion_sigma**2)
    return loss * (weight * context.world_size / batch)


def _start_run(run: Path, data: TrainingData, model_config: ModelConfig, config: TrainConfig,
               resume: bool) -> dict[str, Any] | None:
    """Check the run folder and read (resume) or create (new run) it; rank 0 only."""
    if resume:
        checkpoint = load_checkpoint(run)
        if checkpoint["data_fingerprint"] != data.fingerprint:
            raise DataError("the data differ from the data this run started with (fingerprint mismatch)")
        return checkpoint
    check_run_folder(run, resume=False)
    run.mkdir(parents=True, exist_ok=True)
    (run / CONFIG).write_text(
        json.dumps(
            {"model": model_config.to_dict(), "train": config.to_dict(), "data": data.name,
             "data_fingerprint": data.fingerprint},
            indent=2,
        )
    )
    (run / METRICS).write_text("")
    return None


def train(
    data: TrainingData,
    model_config: ModelConfig,
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: Callable[[int, str], Any] | None = None,
    log: Callable[[str], None] = print,
    context: Context | None = None,
    workers: int = 0,
) -> VAE:
    """Train (or resume) a VAE on ``data``, writing checkpoints and metrics into ``run_dir``.

    ``progress(total_steps, label)`` must return a context manager yielding an object with
    ``update(n)`` and a writable ``loss`` text attribute; the CLI passes a click progress bar.

    ``context`` (default: one CPU process) places this process among the ranks of a
    distributed run: ``config.batch_size`` is the global batch, each rank trains on its share
    and DistributedDataParallel averages the gradients, so the run is the same at any world
    size up to float rounding. Only rank 0 touches ``run_dir``, calls ``progress`` and ``log``.
    ``workers``: DataLoader processes decoding a streamed folder data set (:class:`ImageFolder`).
    Returns the trained model on the CPU, in eval mode.
    """
    context = context or Context()
    if not context.is_main:
        log = _rank_warnings(context.rank)
    run = Path(run_dir)
    if data.image_shape != model_config.image_shape:
        raise DataError(f"data images are {data.image_shape}, the model is configured for {model_config.image_shape}")
    checkpoint = on_rank_0(context, lambda: _start_run(run, data, model_config, config, resume))
    if checkpoint is not None:
        model_config = ModelConfig.from_dict(checkpoint["model_config"])
        config = TrainConfig(**checkpoint["train_config"])
    if config.batch_size < context.world_size:
        raise InputError(f"--batch-size {config.batch_size} is the global batch, shared by {context.world_size} "
                         "processes: it must be at least the number of processes")

    state = _TrainingState.start(model_config, config, len(data.train), checkpoint, context)
    if checkpoint is not None:
        log(f"resuming {run} after epoch {state.epoch}")
    for epoch in range(state.epoch, config.epochs):
        started = time.time()
        bar_context = (progress(state.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}")
                       if progress and context.is_main else contextlib.nullcontext())
        with bar_context as bar:
            nats, seen = _train_epoch(state, data, epoch, context, workers, log, bar)
        raise_if_stopped()
        metrics = {"epoch": epoch + 1, "step": state.step, "train_nelbo_bpd": bits_per_dim(nats / seen, state.dims),
                   "lr": state.scheduler.get_last_lr()[0], "seconds": round(time.time() - started, 1)}
        metrics.update(test_metrics(state.model, data.test, context=context, workers=workers, log=log))
        raise_if_stopped()
        if context.is_main:
            _save_epoch(run, state, data, metrics)
            log(f"epoch {epoch + 1}: train {metrics['train_nelbo_bpd']:.4f}  "
                f"test nelbo {metrics['test_nelbo_bpd']:.4f} bpd "
                f"(recon {metrics['test_recon_bpd']:.4f} + kl {metrics['test_kl_bpd']:.4f})  "
                f"psnr {metrics['test_psnr_db']:.2f} dB  {metrics['seconds']}s")
    return state.model.cpu().eval()


@dataclass
class _TrainingState:
    """What a run carries from step to step: model, optimizer, schedule, and where it is."""

    model: VAE
    objective: nn.Module  # the model's loss, wrapped in DistributedDataParallel when there are ranks
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    model_config: ModelConfig
    config: TrainConfig
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0

    @property
    def dims(self) -> int:
        return self.model_config.pixels

    @classmethod
    def start(cls, model_config: ModelConfig, config: TrainConfig, train_images: int,
              checkpoint: dict[str, Any] | None, context: Context) -> "_TrainingState":
        """A fresh run from the seed, or the state a checkpoint saved, on ``context``'s device."""
        torch.manual_seed(config.seed)
        model = VAE(model_config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        steps_per_epoch = math.ceil(train_images / config.batch_size)
        total_steps = steps_per_epoch * config.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total_steps, config))
        epoch = step = 0
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            epoch, step = checkpoint["epoch"], checkpoint["step"]
            torch.set_rng_state(checkpoint["torch_rng"])
        # Random numbers are drawn on the CPU whatever the device, so the stream is the same on a GPU.
        model.to(context.device)
        _move_optimizer_state(optimizer, context.device)
        objective: nn.Module = _Objective(model)
        if context.distributed:
            from torch.nn.parallel import DistributedDataParallel

            objective = DistributedDataParallel(
                objective, device_ids=[context.device] if context.device.type == "cuda" else None)
        return cls(model, objective, optimizer, scheduler, model_config, config, steps_per_epoch, epoch, step)


def _train_epoch(state: _TrainingState, data: TrainingData, epoch: int, context: Context, workers: int,
                 log: Callable[[str], None], bar: Any) -> tuple[float, float]:
    """One pass over the training set; this run's sum of per-image NELBO (nats) and image count,
    over all ranks. ``bar`` (rank 0's progress bar, or None) shows a running loss."""
    config, model_config = state.config, state.model_config
    state.model.train()
    kl_warmup_steps = max(1, int(config.kl_warmup_epochs * state.steps_per_epoch))
    # One global order from (seed, epoch): a resumed run, and a run at any world size, sees
    # the same batches; each rank takes its contiguous share of each.
    order = np.random.default_rng([config.seed, epoch]).permutation(len(data.train))
    batches = _read_batches(data.train, _global_batches(order, config.batch_size), context, workers, log)
    running = None
    totals = torch.zeros(2, dtype=torch.float64)  # this rank's sum of per-image NELBO (nats), images
    for size, x, rows in batches:
        raise_if_stopped()
        eps = _share_of_noise(size, model_config.latent_dim, context, rows)
        empty = not len(x)
        if empty:
            # A batch of fewer images than ranks leaves some shares empty, yet every rank must
            # join DDP's gradient reduction: a stand-in image with weight 0 adds zero gradients.
            x, eps = torch.zeros(1, *model_config.image_shape, dtype=torch.uint8), torch.zeros(1, eps.shape[1])
        terms = state.objective(x.to(context.device), eps.to(context.device))
        beta = config.beta * min(1.0, state.step / kl_warmup_steps)
        loss = batch_loss(terms, size, beta, config, context, weight=0.0 if empty else 1.0)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1
        nelbo = (terms.recon + terms.kl).detach()[: 0 if empty else None]
        totals += torch.tensor([float(nelbo.sum()), len(nelbo)], dtype=torch.float64)
        if bar is not None:
            # The bar shows rank 0's share; the epoch's figure is over all ranks.
            shown = bits_per_dim(float(nelbo.mean()), state.dims) if len(nelbo) else running or 0.0
            running = shown if running is None else 0.98 * running + 0.02 * shown
            bar.loss = f"nelbo {running:.3f} bpd  beta {beta:.2f}"
            bar.update(1)
    state.epoch = epoch + 1
    nats, seen = context.all_reduce_sum(totals).tolist()
    return nats, seen


def _save_epoch(run: Path, state: _TrainingState, data: TrainingData, metrics: dict[str, Any]) -> None:
    """Rank 0: the checkpoint (atomically) and one line of metrics.jsonl."""
    save_checkpoint(
        {"model": _to_cpu(state.model.state_dict()), "optimizer": _to_cpu(state.optimizer.state_dict()),
         "scheduler": state.scheduler.state_dict(), "epoch": state.epoch, "step": state.step,
         "torch_rng": torch.get_rng_state(), "model_config": state.model_config.to_dict(),
         "train_config": state.config.to_dict(), "data": data.name, "data_fingerprint": data.fingerprint,
         "metrics": metrics},
        run / CHECKPOINT,
    )
    with open(run / METRICS, "a") as f:
        f.write(json.dumps(metrics) + "\n")


def _rank_warnings(rank: int) -> Callable[[str], None]:
    """The log of a rank other than 0: quiet, but for warnings (a file it could not read)."""
    def warn(message: str) -> None:
        if message.startswith("skipping "):
            print(f"[rank {rank}] {message}", file=sys.stderr, flush=True)
    return warn


def _to_cpu(state: Any) -> Any:
    """A state dict with every tensor on the CPU: checkpoints do not depend on the device."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {key: _to_cpu(value) for key, value in state.items()}
    if isinstance(state, list):
        return [_to_cpu(value) for value in state]
    return state


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    if device.type == "cpu":
        return
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


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
