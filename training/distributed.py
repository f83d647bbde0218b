"""Several processes training one model: torchrun's environment, the process group, collectives.

A run that torchrun started (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)
joins a process group, gloo on the CPU and NCCL on CUDA, and wraps its model in PyTorch's
DistributedDataParallel, which averages the gradients. A plain run is one process and sets
nothing up: :class:`Context` then answers every collective locally.

Rank 0 alone writes files and prints; every rank computes. What makes a run the same at any
world size is not here but in the trainer (one global permutation and one global noise draw,
each rank taking its contiguous share, see :meth:`Context.share`).
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgevae.runtime.errors import EdgeVAEError

#: The values of ``--device``: ``auto`` takes CUDA when PyTorch sees a GPU.
DEVICES = ("auto", "cpu", "cuda")

#: Environment variable: seconds a collective waits for a silent peer before the run fails.
TIMEOUT_ENV = "EDGEVAE_DIST_TIMEOUT"

#: Default of :data:`TIMEOUT_ENV`. A peer that dies is noticed at once (its sockets close and
#: torchrun stops the others); this bounds the wait for a peer whose machine vanished or hangs.
DEFAULT_TIMEOUT_SECONDS = 600.0

#: What torchrun sets in every process it starts.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

#: Exit codes of a rank that stops: stopped by torchrun (SIGTERM, as shells report it), interrupted
#: (Ctrl-C), an expected error (EdgeVAEError, as the command line's guard), any other failure.
EXIT_STOPPED, EXIT_INTERRUPTED, EXIT_ERROR, EXIT_FAILED = 143, 130, 2, 1


class Stopped(KeyboardInterrupt):
    """SIGTERM: torchrun stops the other ranks this way when one fails or is interrupted.

    A KeyboardInterrupt, so the same clean-up runs as for Ctrl-C (the checkpoint on disk is
    the last complete epoch, a half-written one is removed).
    """


#: Stop signals received (SIGINT, SIGTERM), once :func:`handle_stop_signals` is in force.
_received: list[int] = []
#: The handlers :func:`handle_stop_signals` replaced.
_previous: dict[int, Any] = {}


def _on_stop_signal(signum: int, _frame: Any) -> None:
    _received.append(signum)
    if len(_received) == 1:  # later ones (torchrun repeats Ctrl-C to its workers) must not break the clean-up
        raise Stopped(f"signal {signum}") if signum == signal.SIGTERM else KeyboardInterrupt()


def handle_stop_signals() -> None:
    """Make Ctrl-C (SIGINT) and SIGTERM stop this process for good.

    Either raises at once (SIGTERM as :class:`Stopped`), and is remembered: an interrupt that
    lands where Python swallows exceptions (a DataLoader's ``__del__`` shutting its workers down)
    is raised again by the next :func:`raise_if_stopped`. :func:`stop` restores the handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # Python lets only the main thread set handlers; an embedding app keeps its own
    _received.clear()
    for signum in (signal.SIGINT, signal.SIGTERM):
        _previous.setdefault(signum, signal.signal(signum, _on_stop_signal))


def _restore_signal_handlers() -> None:
    for signum, handler in _previous.items():
        signal.signal(signum, handler)
    _previous.clear()


def raise_if_stopped() -> None:
    """Raise the interrupt of a stop signal received earlier (a no-op if none was)."""
    if _received:
        raise Stopped(f"signal {_received[0]}") if _received[0] == signal.SIGTERM else KeyboardInterrupt()


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (torch.distributed.run) started."""
    return all(name in os.environ for name in TORCHRUN_VARS)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` -> the device of this process (CUDA: one GPU per local rank)."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: PyTorch sees no CUDA GPU (is this a CPU-only torch build?)")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f"local rank {local_rank} has no GPU: this machine has {count}; "
                         f"start at most {count} processes per node")
    return torch.device("cuda", local_rank)


def timeout_seconds() -> float:
    """The collective timeout: ``$EDGEVAE_DIST_TIMEOUT`` seconds, else the default."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"${TIMEOUT_ENV} must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes and its device.

    The default is a plain one-process CPU run; there every collective is the identity.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: True when a process group was started (torchrun), even of one process.
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and prints."""
        return self.rank == 0

    def share(self, count: int) -> tuple[int, int]:
        """This rank's contiguous part ``[start, stop)`` of ``count`` items.

        Parts differ in size by at most one (the first ones are larger) and may be empty when
        ``count < world_size``; their concatenation in rank order is the whole, so the items
        of a global batch and the rows of its noise line up whatever the world size.
        """
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` over all ranks (a new tensor on ``values``' device)."""
        if not self.distributed:
            return values
        import torch.distributed as dist

        total = values.detach().to(self.device, copy=True)
        dist.all_reduce(total)
        return total.to(values.device)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; keep it small or rare)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._object_device)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    def describe(self) -> str:
        """One line for the log: processes, backend, device and threads."""
        if not self.distributed:
            where = f"1 process on {self.device}"
        else:
            import torch.distributed as dist

            where = f"{self.world_size} processes ({dist.get_backend()}) on {self.device.type}"
        threads = f", {torch.get_num_threads()} torch thread(s) each" if self.device.type == "cpu" else ""
        return where + threads


def start(device: str = "auto") -> Context:
    """The context of this process; joins the process group if torchrun started it.

    Raises ValueError for an unusable ``device`` or timeout setting. Installs
    :func:`handle_stop_signals`: SIGTERM (how torchrun stops the other ranks when one fails)
    raises :class:`Stopped`, Ctrl-C KeyboardInterrupt, and neither can be lost.
    """
    handle_stop_signals()
    if not launched_by_torchrun():
        return Context(device=resolve_device(device))
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    where = resolve_device(device, local_rank)
    timeout = datetime.timedelta(seconds=timeout_seconds())
    if where.type == "cuda":
        torch.cuda.set_device(where)
        dist.init_process_group("nccl", timeout=timeout, device_id=where)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return Context(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                   device=where, distributed=True)


def finish(context: Context) -> None:
    """At the end of a successful run, every rank waits here for the others (rank 0 writes the
    run's figures after training): a rank that tore its process group down while rank 0 was
    still busy was seen to abort in gloo ('terminate called without an active exception')."""
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()


def stop(context: Context) -> None:
    """Leave the process group (if any) and restore the signal handlers :func:`start` replaced."""
    _restore_signal_handlers()
    if context.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def rank_failure(error: BaseException, context: Context, run_dir: str | Path) -> tuple[str | None, int] | None:
    """How this rank ends a training run into ``run_dir`` that ``error`` stopped: the line it
    prints on stderr (None: nothing) and its exit code, or None when the error is the caller's to
    raise (a one-process run's errors, rank 0's EdgeVAEError, which the command line's guard prints).

    One clear line per rank, never a traceback: torchrun stops the other ranks (SIGTERM, raised
    here as :class:`Stopped`) when one fails; a rank that failed names itself and the cause; an
    EdgeVAEError that rank 0 met first (``from_rank_0``) is said by rank 0 alone; an interrupt is
    reported by rank 0 with the command that resumes the run.
    """
    where = f"rank {context.rank} of {context.world_size}: " if context.distributed else ""
    last = Path(run_dir) / "last.pt"
    if isinstance(error, Stopped):
        return (f"{where}stopped by torchrun (another rank failed or the run was interrupted); "
                f"{last} holds the last complete epoch", EXIT_STOPPED)
    if isinstance(error, KeyboardInterrupt):
        if not context.is_main:
            return None, EXIT_INTERRUPTED
        return (f"\n{where}interrupted: {last} holds the last complete epoch; continue with: "
                f"{'torchrun ... ' if context.distributed else 'edgevae-train '}train --out {run_dir} --resume",
                EXIT_INTERRUPTED)
    if isinstance(error, EdgeVAEError):
        if context.is_main or not context.distributed:
            return None
        return (None if getattr(error, "from_rank_0", False) else f"Error: {where}{error}"), EXIT_ERROR
    if isinstance(error, Exception) and context.distributed:
        return f"Error: {where}failed with {type(error).__name__}: {error}; stopping all ranks", EXIT_FAILED
    return None
