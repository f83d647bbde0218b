"""Reading images into uint8 (N, C, H, W) arrays and tiling them into grids (Pillow + numpy).

Channel rules: an image counts as gray (C=1) if Pillow's mode is gray, or if it is RGB(A)
with identical channels; otherwise it has 3 channels. Alpha is dropped. A mismatch with the
model's channel count or size is an :class:`InputError` unless ``resize=True``, which
converts colour and resizes + centre-crops to the model's size.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgevae.runtime.errors import InputError

#: File suffixes treated as images when a folder is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

#: Largest image (width x height) read at all; --resize shrinks anything up to this. Checked from
#: the file's header before its pixels are decoded (a 97 KB PNG can claim 20000x20000 pixels).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024

#: Pixels between tiles of a grid, and their value.
GRID_PADDING = 2
GRID_PAD_VALUE = 255


def find_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by path for a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _to_array(image: Image.Image) -> np.ndarray:
    """Pillow image -> uint8 (H, W, C) with C in {1, 3}, by the channel rules above."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        gray = image.convert("L") if image.mode != "I;16" else image.point(lambda v: v / 257).convert("L")
        return np.asarray(gray, dtype=np.uint8)[:, :, None]
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all():
        return rgb[:, :, :1].copy()
    return rgb


def _check_size(im: Image.Image, name: str, image_shape: tuple[int, int, int], resize: bool) -> None:
    """Refuse an image by the size its header claims, before a pixel is decoded."""
    c, h, w = image_shape
    width, height = im.size
    if not resize and (width, height) != (w, h):
        raise InputError(f"{name}: is {width}x{height} pixels, the model expects {w}x{h}; pass --resize to fit it")
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{name}: is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} pixels "
                         f"edgevae reads (about {math.isqrt(MAX_IMAGE_PIXELS)}x{math.isqrt(MAX_IMAGE_PIXELS)})")


def load_image(path: str | Path | BinaryIO, image_shape: tuple[int, int, int], resize: bool = False,
               name: str | None = None) -> np.ndarray:
    """Read one image (a file, or a binary file object) as uint8 (C, H, W) matching ``image_shape``.

    Raises InputError if the file is missing, not an image, larger than :data:`MAX_IMAGE_PIXELS`
    or (without ``resize``) of the wrong size or channel count; sizes are checked from the
    header, before decoding. ``name`` is what messages call the image (default: the path).
    """
    source = Path(path) if isinstance(path, (str, os.PathLike)) else path
    name = name if name is not None else str(source)
    c, h, w = image_shape
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own pixel limit; ours is checked from the header below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                _check_size(im, name, image_shape, resize)
                im.load()
                array = _to_array(im)
                if resize:
                    mode = "L" if c == 1 else "RGB"
                    fitted = ImageOps.fit(im.convert(mode), (w, h), method=Image.Resampling.LANCZOS)
                    array = np.asarray(fitted, dtype=np.uint8).reshape(h, w, c)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a folder, expected an image file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except Image.DecompressionBombError as e:  # raised by Image.open itself far above Pillow's limit
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "more pixels"
        raise InputError(f"{name}: claims {size}, more than the {MAX_IMAGE_PIXELS:,} pixels edgevae reads") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"{name}: not a readable image ({type(e).__name__})") from None
    if array.shape[2] != c:
        kinds = {1: "gray", 3: "RGB"}
        raise InputError(
            f"{name}: has {array.shape[2]} channel(s) ({kinds[array.shape[2]]}), the model expects {c} "
            f"({kinds.get(c, c)}); pass --resize to convert"
        )
    if array.shape[:2] != (h, w):
        raise InputError(
            f"{name}: is {array.shape[1]}x{array.shape[0]} pixels, the model expects {w}x{h}; pass --resize to fit it"
        )
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tile uint8 images (N, C, H, W) into one uint8 (C, H', W') picture, row by row.

    ``columns`` defaults to ceil(sqrt(N)), which makes the grid as square as possible.
    """
    n, c, h, w = images.shape
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    p = GRID_PADDING
    out = np.full((c, rows * (h + p) + p, cols * (w + p) + p), GRID_PAD_VALUE, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[:, p + r * (h + p) : p + r * (h + p) + h, p + k * (w + p) : p + k * (w + p) + w] = images[i]
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB of each pair of uint8 images (N, ...): 10 log10(255^2 / MSE); identical images
    get 100 dB (MSE floored at 1e-10). Float64 (N,)."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff**2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def to_pil(image: np.ndarray) -> Image.Image:
    """uint8 (C, H, W) with C in {1, 3} -> Pillow image (mode L or RGB)."""
    if image.shape[0] == 1:
        return Image.fromarray(image[0], mode="L")
    return Image.fromarray(image.transpose(1, 2, 0), mode="RGB")


def _read_npy(f: BinaryIO, size: int) -> np.ndarray:
    """An array from an open .npy file of ``size`` bytes; the header is checked against the size
    first, so a truncated file (or a forged shape) is refused before memory is allocated for it."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError("holds Python objects, which are never loaded")
    expected = math.prod(shape) * dtype.itemsize
    available = size - f.tell()
    if available < expected:
        raise ValueError(f"truncated: its header promises {expected:,} bytes of data, the file holds {available:,}")
    f.seek(0)
    return np.load(f, allow_pickle=False)


def load_npy(path: str | Path | BinaryIO, name: str | None = None) -> np.ndarray:
    """Read a .npy array (never pickles); InputError if it is missing, truncated or not a valid .npy file.

    ``path`` may be a binary file object; ``name`` is what messages call it (default: the path).
    """
    name = name if name is not None else str(path)
    try:
        if isinstance(path, (str, os.PathLike)):
            with open(path, "rb") as f:
                return _read_npy(f, os.fstat(f.fileno()).st_size)
        return _read_npy(path, path.seek(0, io.SEEK_END) - path.seek(0))
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a folder, expected a .npy file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{name}: not a valid .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _check_npy_images(array: np.ndarray, name: str, image_shape: tuple[int, int, int]) -> np.ndarray:
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(image_shape):
        raise InputError(f"{name}: holds an array of shape {array.shape}, expected (N, {', '.join(map(str, image_shape))})")
    if array.dtype != np.uint8:
        raise InputError(f"{name}: holds {array.dtype} values, expected uint8 pixels")
    if len(array) == 0:
        raise InputError(f"{name}: holds no images")
    return array


def read_image_bytes(data: bytes, name: str, image_shape: tuple[int, int, int],
                     resize: bool = False) -> tuple[np.ndarray, list[str]]:
    """Images from the bytes of one image file or .npy array (e.g. stdin), named ``name`` in
    messages: uint8 (N, C, H, W) and one name per image, as :func:`read_images`."""
    if data.startswith(b"\x93NUMPY"):
        array = _check_npy_images(load_npy(io.BytesIO(data), name), name, image_shape)
        return array, [f"{name}-{i:04d}" for i in range(len(array))]
    return load_image(io.BytesIO(data), image_shape, resize, name)[None], [name]


def read_images(
    inputs: list[str | Path], image_shape: tuple[int, int, int], resize: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Gather images from files, folders (recursive) and .npy arrays into uint8 (N, C, H, W).

    Returns the images and one name (file stem) per image, in input order. A .npy array must
    hold uint8 images (N, C, H, W) or one (C, H, W) image of the model's shape.
    """
    arrays: list[np.ndarray] = []
    names: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.suffix.lower() == ".npy":
            array = _check_npy_images(load_npy(path), str(path), image_shape)
            arrays.append(array)
            names += [f"{path.stem}-{i:04d}" for i in range(len(array))]
        elif path.is_dir():
            files = find_image_files(path)
            if not files:
                raise InputError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            arrays += [load_image(f, image_shape, resize)[None] for f in files]
            names += [str(f.relative_to(path).with_suffix("")).replace(os.sep, "_") for f in files]
        else:
            arrays.append(load_image(path, image_shape, resize)[None])
            names.append(path.stem)
    if not arrays:
        raise InputError("no input images given")
    return np.concatenate(arrays), names
