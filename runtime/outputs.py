"""Writing results safely, all or nothing: PNG pictures, folders of PNGs, .npy arrays, raw bytes.

One writer, :func:`write_files`, serves every output (single files, ``encode --logvar``, folders,
``compress --split``). Its promise holds under any failure: a full disk, an unwritable place,
Ctrl-C or SIGTERM part-way:

1. every target is checked before the first byte is written; an existing file is refused
   unless ``force=True``;
2. the new files are written completely under temporary names beside their targets
   (``.NAME.XXXXXXXX.tmp`` in the same folder, so the final rename never crosses a file system);
3. only then are the targets replaced, with SIGINT/SIGTERM held back until the step is over:
   each existing target is first hard-linked to a backup name (``.NAME.XXXXXXXX.bak``), so if a
   replacement fails part-way every target replaced so far is put back from its backup;
4. temporary files and backups are removed in every case, and a folder created for the output
   is removed again if the write fails.

So after any failure the previous state is back exactly and nothing of ours is left behind;
after success every target holds its new bytes (new inodes: a hard link to an old version keeps
the old bytes).

Where an image output goes is decided by its name:
``*.png`` -> one picture (:func:`picture_png`: a single image is written as itself, exactly
C x H x W; several are tiled into a grid); ``*.npy`` -> the uint8 array (N, C, H, W);
anything else (an existing or new folder) -> one PNG per image.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgevae.runtime.errors import OutputError
from edgevae.runtime.images import grid, to_pil

#: Suffixes of our own short-lived files beside a target.
TEMP_SUFFIX, BACKUP_SUFFIX = ".tmp", ".bak"

#: Signals held back while targets are being replaced or restored.
_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def output_kind(out: str | Path) -> str:
    """``png`` (one picture), ``npy`` or ``folder`` for an image output path."""
    suffix = Path(out).suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix == ".npy":
        return "npy"
    return "folder"


def check_target(path: Path, force: bool) -> None:
    """OutputError unless ``path`` can be written as a file now (``force`` allows replacing one).

    Checks what can be known without writing: whether the place is a folder, whether a file is
    there, whether the parent folder exists. Whether the folder is writable (read-only file
    system, permissions, a full disk) shows when the file is written, which the writer undoes.
    """
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, cannot write a file there")
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path}: already exists; pass --force to overwrite it")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{parent}: folder does not exist" if not parent.exists() else f"{parent}: is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: folder is not writable")


def check_npy_name(target: str | Path | None, what: str) -> None:
    """OutputError unless ``target`` (None: no such output) names a .npy file, for ``what`` is
    written as one."""
    if target is not None and not str(target).lower().endswith(".npy"):
        raise OutputError(f"{target}: {what} are written as .npy; give a name ending in .npy")


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM for the duration of the block, then deliver them.

    Python runs signal handlers in the main thread only, so outside it there is nothing to hold.
    A signal that arrives inside the block reaches its previous handler right after it (Ctrl-C
    then raises KeyboardInterrupt there), so a replacement is never cut in half.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    for sig in _HELD_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is None:  # installed outside Python: leave it alone
            continue
        previous[sig] = handler
        signal.signal(sig, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            handler = previous.get(caught[0])
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), caught[0])


def _short(name: str) -> str:
    """A target's name cut to fit, with our prefix and suffix, in a file system's 255-byte names."""
    return name.encode()[:200].decode(errors="ignore")


def _unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _message(path: Path, action: str, error: OSError) -> str:
    return f"{path}: cannot {action} ({error.strerror or type(error).__name__})"


def _stage(target: Path, data: bytes, temps: list[str]) -> str:
    """Write ``data`` completely to a new temporary file beside ``target``; returns its name.

    The name is recorded in ``temps`` before a byte is written, so the caller can always remove it.
    """
    with signals_held():
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{_short(target.name)}.", suffix=TEMP_SUFFIX, dir=target.parent)
        except OSError as e:
            raise OutputError(_message(target.parent, "write here", e)) from None
        temps.append(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
    except OSError as e:
        raise OutputError(_message(target, "write", e)) from None
    return tmp


def _backup(target: Path) -> str:
    """Keep the current ``target`` under a fresh backup name beside it (a hard link, else a rename)."""
    if target.is_dir() and not target.is_symlink():
        raise IsADirectoryError(21, "Is a directory", str(target))
    for _ in range(100):
        backup = str(target.parent / f".{_short(target.name)}.{secrets.token_hex(4)}{BACKUP_SUFFIX}")
        try:
            os.link(target, backup, follow_symlinks=False)
            return backup
        except FileExistsError:
            continue
        except OSError:  # no hard links here (some file systems): move the original aside instead
            if os.path.lexists(backup):
                continue
            os.rename(target, backup)
            return backup
    raise FileExistsError(f"no free backup name beside {target}")


def _replace_all(staged: list[tuple[str, Path]]) -> None:
    """Move every staged file onto its target; on failure put every replaced target back."""
    replaced: list[tuple[Path, str | None]] = []
    pending: tuple[Path, str] | None = None
    try:
        for tmp, target in staged:
            backup = None
            if os.path.lexists(target):
                backup = _backup(target)
                pending = (target, backup)
            os.replace(tmp, target)
            pending = None
            replaced.append((target, backup))
    except OSError as e:
        failed = staged[len(replaced)][1]
        lost = []
        undo = ([pending] if pending else []) + list(reversed(replaced))
        for target, backup in undo:
            try:
                if backup is None:
                    os.unlink(target)
                elif os.path.lexists(target) and os.path.samestat(os.lstat(backup), os.lstat(target)):
                    # The replace never happened and the backup is a hard link to the original:
                    # renaming one link onto another of the same file is a no-op (POSIX), which
                    # would leave the backup behind; the original is intact, drop the link.
                    os.unlink(backup)
                else:
                    os.replace(backup, target)
            except OSError:
                lost.append(f"{target} (previous version kept as {backup})" if backup else str(target))
        if lost:
            raise OutputError(f"{failed}: cannot write ({e.strerror}), and could not put back {', '.join(lost)}") from None
        raise OutputError(_message(failed, "write", e)) from None
    for _, backup in replaced:
        if backup is not None:
            _unlink_quietly(backup)


def write_files(files: Sequence[tuple[str | Path, bytes]], force: bool = False) -> list[Path]:
    """Write several files all or nothing (see the module docstring for the promise).

    Every target is checked first; OutputError names the first problem. Any exception, including
    KeyboardInterrupt, leaves the targets as they were and no temporary file behind.
    """
    paths = [Path(p) for p, _ in files]
    if len({p.resolve() for p in paths}) != len(paths):
        raise OutputError("two outputs name the same file")
    for path in paths:
        check_target(path, force)
    temps: list[str] = []
    try:
        staged = [(_stage(path, data, temps), path) for path, (_, data) in zip(paths, files)]
        with signals_held():
            _replace_all(staged)
    except BaseException:
        with signals_held():
            for tmp in temps:
                _unlink_quietly(tmp)
        raise
    return paths


def atomic_write_bytes(path: str | Path, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to ``path`` all or nothing (:func:`write_files` with one file)."""
    return write_files([(path, data)], force)[0]


def png_bytes(image: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode one uint8 (C, H, W) image as PNG bytes (zlib ``compress_level`` 0..9; 6 is Pillow's default)."""
    buffer = io.BytesIO()
    # A buffer named *.png makes Pillow import only its PNG plugin; format="PNG" would first
    # import five format plugins, 10-20 ms of every image-writing command's start-up.
    buffer.name = "image.png"
    to_pil(image).save(buffer, compress_level=compress_level)
    return buffer.getvalue()


def picture_png(images: np.ndarray) -> bytes:
    """The PNG bytes of one picture of uint8 images (N, C, H, W), N >= 1: a single image is the
    image itself, exactly (C, H, W), so it round-trips pixel for pixel; several are tiled by
    :func:`~edgevae.runtime.images.grid`. Every ``.png`` output (files and stdout) goes through here.
    """
    if len(images) == 0:
        raise OutputError("no images to write as a picture")
    return png_bytes(images[0] if len(images) == 1 else grid(images))


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
    """Write uint8 images (N, C, H, W) to ``out`` as one picture (:func:`picture_png`), an array
    or a folder of PNGs, by :func:`output_kind`.

    Returns the paths written. ``names`` (file stems) are used for folder output. A picture or a
    folder needs at least one image (an .npy array may hold none).
    """
    target = Path(out)
    kind = output_kind(target)
    if kind == "npy":
        return [atomic_write_bytes(target, npy_bytes(images), force)]
    if len(images) == 0:
        raise OutputError(f"{target}: no images to write")
    if kind == "png":
        return [atomic_write_bytes(target, picture_png(images), force)]
    return write_folder(target, [png_bytes(image) for image in images], names, ".png", force)


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; returns the folders created, deepest first."""
    missing = []
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            _remove_folders(missing)
            raise OutputError(_message(created, "create folder", e)) from None
    return missing


def _remove_folders(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; only if still empty
        with contextlib.suppress(OSError):
            folder.rmdir()


def write_folder(folder: str | Path, payloads: Sequence[bytes], names: Sequence[str] | None = None,
                 suffix: str = ".png", force: bool = False) -> list[Path]:
    """Write one ``<name><suffix>`` file per payload into ``folder`` (created if needed), all or
    nothing through :func:`write_files`; folders this call created go again if it fails."""
    target = Path(folder)
    if os.path.lexists(target) and not target.is_dir():
        raise OutputError(f"{target}: exists and is not a folder")
    paths = folder_targets(target, names, len(payloads), suffix)
    if not force:  # refuse before creating anything
        existing = [p for p in paths if os.path.lexists(p)]
        if existing:
            raise OutputError(f"{existing[0]}: already exists; pass --force to overwrite it")
    created: list[Path] = []
    try:
        with signals_held():
            created = _make_folder(target)
        return write_files(list(zip(paths, payloads)), force)
    except BaseException:
        with signals_held():
            _remove_folders(created)
        raise
