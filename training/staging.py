"""Writing a bundle folder all or nothing: build it in a staging folder beside the target, then
swap it into place.

Export, int8/fp16 variants and the denoising bundle each write a whole folder of graphs, tables
and manifest, and each can fail part-way (a graph that misses its parity check, a full disk,
Ctrl-C). The target is then left exactly as it was and no staging folder remains. The folder
counterpart of :func:`edgevae.runtime.outputs.write_files` (files all or nothing), with the same
hold on SIGINT/SIGTERM while the old folder is swapped for the new one.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgevae.runtime.errors import EdgeVAEError, ExportError, OutputError
from edgevae.runtime.outputs import signals_held


def check_target(target: Path, force: bool) -> None:
    """OutputError if ``target`` exists and replacing it was not asked for (``--force``)."""
    if target.exists() and not force:
        raise OutputError(f"{target} already exists; pass --force to replace it")


@contextlib.contextmanager
def staged_bundle(target: str | Path, force: bool, what: str = "export") -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; when the block ends without an error the
    folder replaces ``target``. On any error the staging folder is removed: typed edgevae errors
    pass through, anything else becomes ``ExportError("{what} failed: ...")``."""
    target = Path(target)
    check_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is ordinary package data
        _swap_in(staging, target)
    except EdgeVAEError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as e:
        shutil.rmtree(staging, ignore_errors=True)
        first = str(e).splitlines()[0] if str(e) else ""
        raise ExportError(f"{what} failed: {type(e).__name__}: {first}") from e
    except BaseException:  # Ctrl-C: nothing half-written stays behind
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, target: Path) -> None:
    """Put the folder ``staging`` at ``target``: the old target is first renamed aside (not
    deleted), so an error or a signal at any point leaves the old folder or the new one in
    place, never neither; the old one is deleted only once the new one is there."""
    old = staging.with_name(staging.name + ".old")  # staging's name is unique, so this one is
    with signals_held():
        if target.exists():
            target.rename(old)
        try:
            staging.rename(target)
        except BaseException:
            if old.exists():
                old.rename(target)
            raise
    shutil.rmtree(old, ignore_errors=True)
