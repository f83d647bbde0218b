"""A torchrun entry point for tests: ``edgevae-train`` with two probes, set by environment variables.

- ``PROBE_WATCH=DIR``: every rank records the file-system writes it makes under DIR (Python's audit
  events: open for writing, rename/replace, remove, mkdir) and prints them at exit on stderr, one
  line ``PROBE rank R wrote "..."`` per write and a last ``PROBE rank R done``, so a test can check
  that rank 0 alone writes the run.
- ``PROBE_FAIL_RANK=R`` and ``PROBE_FAIL_AFTER=K``: rank R raises RuntimeError("injected failure")
  in its (K+1)-th training forward pass, as a rank that crashes mid-run; with ``PROBE_HANG=1`` it
  sleeps there instead, as a peer that hangs (alive, silent).

The probes live here, not in the product: the training code has no test hooks.
"""

from __future__ import annotations

import atexit
import json
import os
import sys

RANK = int(os.environ.get("RANK", "0"))


def watch_writes(folder: str) -> None:
    root = os.path.realpath(folder)
    seen: list[str] = []

    def inside(path: object) -> bool:
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        if not isinstance(path, str):
            return False
        return os.path.realpath(path).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and inside(path):
                seen.append(f"open {path}")
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir") and inside(args[0]):
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    def report() -> None:
        # One short line per write, then an end line: each line is one write() below PIPE_BUF, so
        # the ranks' reports never interleave inside a line (one long line of a few KB did).
        for entry in seen:
            print(f"PROBE rank {RANK} wrote {json.dumps(entry)}", file=sys.stderr, flush=True)
        print(f"PROBE rank {RANK} done", file=sys.stderr, flush=True)

    atexit.register(report)


def fail_later(after: int, hang: bool) -> None:
    import time

    import torch

    from edgevae.training.model import VAE

    real = VAE.loss_terms
    calls = [0]

    def loss_terms(self, images, eps=None):  # type: ignore[no-untyped-def]
        if torch.is_grad_enabled():  # training steps, not evaluation
            calls[0] += 1
            if calls[0] > after:
                if hang:
                    time.sleep(3600)
                raise RuntimeError("injected failure")
        return real(self, images, eps)

    VAE.loss_terms = loss_terms  # type: ignore[method-assign]


if __name__ == "__main__":
    if os.environ.get("PROBE_WATCH"):
        watch_writes(os.environ["PROBE_WATCH"])
    if os.environ.get("PROBE_FAIL_RANK") == str(RANK):
        fail_later(int(os.environ.get("PROBE_FAIL_AFTER", "0")), hang=os.environ.get("PROBE_HANG") == "1")
    from edgevae.training.cli import main

    main()
