"""Reading images into uint8 (N, C, H, W) arrays and tiling them into grids (Pillow + numpy).

Channel rules: an image counts as gray (C=1) if Pillow's mode is gray, or if it is RGB(A)
with identical channels; otherwise it has 3 channels. Alpha is dropped. A mismatch with the
model's channel count or size is an :class:`InputError` unless ``resize=True``, which
converts colour and resizes + centre-crops to the model's size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgevae.runtime.errors import InputError

#: File suffixes treated as images when a folder is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

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


def load_image(path: str | Path, image_shape: tuple[int, int, int], resize: bool = False) -> np.ndarray:
    """Read one image file as uint8 (C, H, W) matching ``image_shape`` = (C, H, W).

    Raises InputError if the file is missing, not an image, or (without ``resize``) of the
    wrong size or channel count.
    """
    path = Path(path)
    c, h, w = image_shape
    try:
        with Image.open(path) as im:
            im.load()
            array = _to_array(im)
            if resize:
                mode = "L" if c == 1 else "RGB"
                fitted = ImageOps.fit(im.convert(mode), (w, h), method=Image.Resampling.LANCZOS)
                array = np.asarray(fitted, dtype=np.uint8).reshape(h, w, c)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected an image file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__})") from None
    if array.shape[2] != c:
        kinds = {1: "gray", 3: "RGB"}
        raise InputError(
            f"{path}: has {array.shape[2]} channel(s) ({kinds[array.shape[2]]}), the model expects {c} "
            f"({kinds.get(c, c)}); pass --resize to convert"
        )
    if array.shape[:2] != (h, w):
        raise InputError(
            f"{path}: is {array.shape[1]}x{array.shape[0]} pixels, the model expects {w}x{h}; pass --resize to fit it"
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


def load_npy(path: Path) -> np.ndarray:
    """Read a .npy array (never pickles); InputError if it is missing or not a valid .npy file."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: not a valid .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


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
            array = load_npy(path)
            if array.ndim == 3:
                array = array[None]
            if array.ndim != 4 or tuple(array.shape[1:]) != tuple(image_shape):
                raise InputError(
                    f"{path}: holds an array of shape {array.shape}, expected (N, {', '.join(map(str, image_shape))})"
                )
            if array.dtype != np.uint8:
                raise InputError(f"{path}: holds {array.dtype} values, expected uint8 pixels")
            if len(array) == 0:
                raise InputError(f"{path}: holds no images")
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
