"""Where a command's inputs come from: files, folders, .npy arrays, and ``-`` for stdin.

The rules for what an image file may hold are :mod:`edgevae.runtime.images`'; this module only
decides where bytes come from and turns every failure to read them into one InputError line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edgevae.runtime.errors import InputError

#: The file name that means stdin (inputs) or stdout (outputs).
STDIO = "-"

#: The name messages and outputs give images read from stdin.
STDIN_NAME = "stdin"


def stdin_bytes() -> bytes:
    """All of stdin; InputError if it is closed or empty."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise InputError("stdin: is closed, nothing to read ('-' reads stdin)")
    try:
        data = stream.read()
    except (OSError, ValueError) as e:
        raise InputError(f"stdin: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not data:
        raise InputError("stdin: is empty ('-' reads stdin)")
    return data


def read_bytes(source: str) -> bytes:
    """The bytes of a file, or of stdin for ``-``; InputError naming the file if it cannot be read."""
    if source == STDIO:
        return stdin_bytes()
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{source}: is a folder, expected a file") from None
    except OSError as e:
        raise InputError(f"{source}: cannot read ({e.strerror})") from None


def source_stem(source: str) -> str:
    """The name outputs made from ``source`` take: the file's stem, ``stdin`` for ``-``."""
    return STDIN_NAME if source == STDIO else Path(source).stem


def gather_images(inputs: Sequence[str], image_shape: tuple[int, int, int],
                  resize: bool = False) -> tuple[np.ndarray, list[str]]:
    """:func:`~edgevae.runtime.images.read_images` over ``inputs``, where ``-`` is one image file or
    .npy array read from stdin: uint8 (N, C, H, W) and one name per image, in input order."""
    from edgevae.runtime.images import read_image_bytes, read_images  # Pillow: not for --help

    if STDIO not in inputs:
        return read_images(list(inputs), image_shape, resize=resize)
    arrays, names = [], []
    for item in inputs:
        if item != STDIO:
            images, found = read_images([item], image_shape, resize=resize)
        else:
            images, found = read_image_bytes(stdin_bytes(), STDIN_NAME, image_shape, resize=resize)
        arrays.append(images)
        names += found
    return np.concatenate(arrays), names


def read_one_image(source: str, image_shape: tuple[int, int, int], resize: bool = False) -> np.ndarray:
    """The single image ``source`` holds, uint8 (C, H, W); InputError if it holds another count."""
    from edgevae.runtime.images import read_images

    images, _ = read_images([source], image_shape, resize=resize)
    if len(images) != 1:
        raise InputError(f"{source}: holds {len(images)} images, interpolate needs exactly one per end")
    return images[0]
