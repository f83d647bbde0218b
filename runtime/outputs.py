"""Writing results safely: PNG grids, folders of PNGs, .npy arrays, raw bytes.

Every file is written to a temporary name in its destination folder and renamed into place,
so a failure never leaves a partial file. Existing files are never replaced unless
``force=True``; all targets are checked before the first byte is written.

Where an image output goes is decided by its name:
``*.png`` -> one grid picture; ``*.npy`` -> the uint8 array (N, C, H, W);
anything else (an existing or new folder) -> one PNG per image.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from edgevae.runtime.errors import OutputError
from edgevae.runtime.images import grid, to_pil


def output_kind(out: str | Path) -> str:
    """``grid``, ``npy`` or ``folder`` for an image output path."""
    suffix = Path(out).suffix.lower()
    if suffix == ".png":
        return "grid"
    if suffix == ".npy":
        return "npy"
    return "folder"


def check_target(path: Path, force: bool) -> None:
    """OutputError unless ``path`` can be written as a file now (``force`` allows replacing one)."""
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, cannot write a file there")
    if path.exists() and not force:
        raise OutputError(f"{path}: already exists; pass --force to overwrite it")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{parent}: folder does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: folder is not writable")


def atomic_write_bytes(path: str | Path, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    target = Path(path)
    check_target(target, force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise OutputError(f"{target.parent}: cannot write here ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{target}: cannot write ({e.strerror})") from None
    return target


def write_files(files: Sequence[tuple[str | Path, bytes]], force: bool = False) -> list[Path]:
    """Write several files all or nothing: every target is checked first, and if one write
    fails the files this call already wrote are removed again."""
    paths = [Path(p) for p, _ in files]
    if len({p.resolve() for p in paths}) != len(paths):
        raise OutputError("two outputs name the same file")
    for path in paths:
        check_target(path, force)
    written: list[Path] = []
    try:
        for path, (_, data) in zip(paths, files):
            written.append(atomic_write_bytes(path, data, force))
    except OutputError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def png_bytes(image: np.ndarray) -> bytes:
    """Encode one uint8 (C, H, W) image as PNG bytes."""
    buffer = io.BytesIO()
    # A buffer named *.png makes Pillow import only its PNG plugin; format="PNG" would first
    # import five format plugins, 10-20 ms of every image-writing command's start-up.
    buffer.name = "image.png"
    to_pil(image).save(buffer)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialize an array in .npy format."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def folder_targets(folder: Path, names: Sequence[str] | None, count: int, suffix: str = ".png") -> list[Path]:
    """File paths for ``count`` items in ``folder``: ``<name><suffix>``, or ``0000<suffix>``... if unnamed.

    Duplicate names get ``-1``, ``-2``... suffixes so no output overwrites another.
    """
    width = max(4, len(str(max(count - 1, 0))))
    stems = list(names) if names is not None else [f"{i:0{width}d}" for i in range(count)]
    seen: dict[str, int] = {}
    paths = []
    for stem in stems:
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        paths.append(folder / (f"{stem}{suffix}" if n == 0 else f"{stem}-{n}{suffix}"))
    return paths


def write_images(
    images: np.ndarray, out: str | Path, names: Sequence[str] | None = None, force: bool = False
) -> list[Path]:
    """Write uint8 images (N, C, H, W) to ``out`` as a grid, an array or a folder of PNGs.

    Returns the paths written. ``names`` (file stems) are used for folder output.
    """
    target = Path(out)
    kind = output_kind(target)
    if kind == "grid":
        if len(images) == 0:
            raise OutputError("no images to write")
        return [atomic_write_bytes(target, png_bytes(grid(images)), force)]
    if kind == "npy":
        return [atomic_write_bytes(target, npy_bytes(images), force)]
    return write_folder(target, [png_bytes(image) for image in images], names, ".png", force)


def write_folder(folder: str | Path, payloads: Sequence[bytes], names: Sequence[str] | None = None,
                 suffix: str = ".png", force: bool = False) -> list[Path]:
    """Write one ``<name><suffix>`` file per payload into ``folder`` (created if needed), all or
    nothing: if any write fails, the files written and a folder this call created are removed."""
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target}: exists and is not a folder")
    paths = folder_targets(target, names, len(payloads), suffix)
    if not force:  # refuse before creating anything
        existing = [p for p in paths if p.exists()]
        if existing:
            raise OutputError(f"{existing[0]}: already exists; pass --force to overwrite it")
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{target}: cannot create folder ({e.strerror})") from None
    try:
        return write_files(list(zip(paths, payloads)), force)
    except OutputError:
        if created:
            try:
                target.rmdir()
            except OSError:
                pass
        raise
