"""Writing a bundle folder all or nothing: build it in a staging folder beside the target, then
swap it into place.

Export, int8/fp16 variants and the denoising bundle each write a whole folder of graphs, tables
and manifest, and each can fail part-way (a graph that misses its parity check, a full disk,
Ctrl-C). The target is then left exactly as it was and no staging folder remains.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgevae.runtime.errors import EdgeVAEError, ExportError, OutputError


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
        if target.exists():
            shutil.rmtree(target)
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is ordinary package data
        staging.rename(target)
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
