"""Reading images into uint8 (N, C, H, W) arrays and tiling them into grids (Pillow + numpy).

Input rules (what :func:`load_image` does with each kind of file; README "Command line" says the same):

- **Bit depth.** 8-bit pixels are taken as they are. 16-bit gray (PNG, TIFF, PGM) is mapped to
  8 bits the way a viewer shows it, ``v8 = round(v16 * 255 / 65535)`` (so 8-bit values stored as
  ``v * 257`` come back exactly). Pillow itself reduces 16-bit *colour* and 16-bit gray + alpha
  PNGs to their high byte, ``v16 >> 8``, within one level of that rule. Both give the same pixels
  with and without ``resize``: resizing works on the 8-bit image. Floating-point pixels have no
  standard scale and are refused, as are 32-bit integers outside 0..65535.
- **Alpha.** A fully opaque alpha channel (every value 255, also a palette's or a tRNS colour's
  transparency that no pixel uses) is ignored. Real transparency is refused: changing pixels
  silently is worse for a codec than a clear error. With ``resize`` (the flag that fits any
  image to the model) it is composited over :data:`ALPHA_BACKGROUND`.
- **Colour.** An image counts as gray if its mode is gray or its colour channels are identical
  everywhere; otherwise it is colour. A gray/colour mismatch with the model is an
  :class:`InputError` unless ``resize``, which converts (Pillow's ITU-R 601-2 luma for gray).
- **Size.** An image of another size is an :class:`InputError` unless ``resize``, which
  resizes (Lanczos) and centre-crops it to the model's size; anything above
  :data:`MAX_IMAGE_PIXELS` is refused from its header, before decoding.
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

#: The level a fully transparent pixel becomes when ``resize`` composites an image: black, the
#: background of the shipped bundles' training data (Fashion-MNIST draws objects on 0), so a
#: transparent surround reads as "no object" to the model.
ALPHA_BACKGROUND = 0

#: Pixels between tiles of a grid, and their value.
GRID_PADDING = 2
GRID_PAD_VALUE = 255

#: Pillow modes that hold one gray channel (plus alpha for LA and La).
_GRAY_MODES = ("1", "L", "LA", "La")

#: How messages describe an image's mode (others are named by their Pillow mode).
_MODE_NAMES = {"1": "1 channel, black and white", "L": "1 channel, gray", "LA": "2 channels, gray + alpha",
               "La": "2 channels, gray + alpha", "P": "palette", "PA": "palette + alpha", "RGB": "3 channels, RGB",
               "RGBA": "4 channels, RGBA", "RGBa": "4 channels, RGBA", "RGBX": "3 channels, RGB",
               "CMYK": "4 channels, CMYK", "YCbCr": "3 channels, YCbCr", "LAB": "3 channels, Lab",
               "HSV": "3 channels, HSV", "I": "1 channel, integers"}


def find_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by path for a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _describe_mode(mode: str) -> str:
    if mode.startswith("I;16"):
        return "1 channel, 16-bit gray"
    return _MODE_NAMES.get(mode, f"Pillow mode {mode}")


#: 16-bit level -> 8-bit level, round(v * 255 / 65535) in integers (v / 257 is never halfway).
_SIXTEEN_TO_EIGHT = ((np.arange(65536, dtype=np.uint32) * 255 + 65535 // 2) // 65535).astype(np.uint8)


def _sixteen_bit_gray(image: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A 16-bit gray Pillow image (I;16*, or I holding 0..65535) -> uint8 (H, W, 1) by
    :data:`_SIXTEEN_TO_EIGHT`, and its alpha from a tRNS gray level (or None)."""
    wide = np.asarray(image)  # uint16 (I;16B arrives big-endian) or int32 (I)
    if wide.size and (int(wide.min()) < 0 or int(wide.max()) > 65535):
        raise InputError(f"{name}: has 32-bit integer pixels outside 0..65535 ({wide.min()}..{wide.max()}), "
                         "a scale edgevae cannot map to 8 bits; save it as an 8- or 16-bit image")
    gray = _SIXTEEN_TO_EIGHT[wide][:, :, None]  # a table: 1 byte per pixel, where v * 255 needs 4
    key = image.info.get("transparency")
    alpha = np.where(wide == key, 0, 255).astype(np.uint8) if isinstance(key, int) else None
    return gray, alpha


def _decode(image: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Pillow image -> uint8 (H, W, C) with C in {1, 3} and its uint8 alpha (H, W), or None when
    the image has no transparency or every pixel is opaque; bit depth and gray by the rules above."""
    mode = image.mode
    if mode == "F":
        raise InputError(f"{name}: has floating-point pixels, which have no standard 8-bit scale; "
                         "save it as an 8- or 16-bit image")
    if mode.startswith("I;16") or mode == "I":  # Pillow opens 16-bit PGM as I, scaled to 0..65535
        pixels, alpha = _sixteen_bit_gray(image, name)
    else:
        transparent = image.has_transparency_data
        target = ("LA" if transparent else "L") if mode in _GRAY_MODES else ("RGBA" if transparent else "RGB")
        array = np.asarray(image.convert(target), dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        pixels, alpha = (array[:, :, :-1], array[:, :, -1]) if transparent else (array, None)
    if alpha is not None and (alpha == 255).all():
        alpha = None
    if pixels.shape[2] == 3 and (pixels[:, :, :1] == pixels[:, :, 1:]).all():  # colour that is gray
        pixels = pixels[:, :, :1]
    return np.ascontiguousarray(pixels), alpha


def _composite(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) pixels with uint8 alpha (H, W) over :data:`ALPHA_BACKGROUND`, rounded."""
    a = alpha.astype(np.uint32)[:, :, None]
    return ((pixels * a + ALPHA_BACKGROUND * (255 - a) + 127) // 255).astype(np.uint8)


def _check_size(im: Image.Image, name: str, image_shape: tuple[int, int, int], resize: bool) -> None:
    """Refuse an image by the size its header claims, before a pixel is decoded."""
    c, h, w = image_shape
    width, height = im.size
    if not resize and (width, height) != (w, h):
        raise InputError(f"{name}: is {width}x{height} pixels, the model expects {w}x{h}; pass --resize to fit it")
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{name}: is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} pixels "
                         f"edgevae reads (about {math.isqrt(MAX_IMAGE_PIXELS)}x{math.isqrt(MAX_IMAGE_PIXELS)})")


def _fit(pixels: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 (h, w, c) of ``image_shape``: colour converted by Pillow (gray to
    RGB by repetition, RGB to gray by ITU-R 601-2 luma), then resized + centre-cropped (Lanczos).
    An image already of the model's shape comes back unchanged."""
    c, h, w = image_shape
    image = to_pil(pixels.transpose(2, 0, 1)).convert("L" if c == 1 else "RGB")
    fitted = ImageOps.fit(image, (w, h), method=Image.Resampling.LANCZOS)
    return np.asarray(fitted, dtype=np.uint8).reshape(h, w, c)


def load_image(path: str | Path | BinaryIO, image_shape: tuple[int, int, int], resize: bool = False,
               name: str | None = None) -> np.ndarray:
    """Read one image (a file, or a binary file object) as uint8 (C, H, W) matching ``image_shape``,
    by the input rules of this module's docstring.

    Raises InputError if the file is missing, not an image, larger than :data:`MAX_IMAGE_PIXELS`,
    has floating-point pixels, or (without ``resize``) has transparent pixels or the wrong size
    or channel count; sizes are checked from the header, before decoding. ``name`` is what
    messages call the image (default: the path).
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
                kind = _describe_mode(im.mode)
                pixels, alpha = _decode(im, name)
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
    if alpha is not None:
        if not resize:
            raise InputError(f"{name}: has transparent pixels ({kind}); edgevae codes opaque images only: "
                             "flatten it first, or pass --resize to composite it over black")
        pixels = _composite(pixels, alpha)
    if pixels.shape[2] != c and not resize:
        found = "gray" if pixels.shape[2] == 1 else "colour"
        expected = "gray (1 channel)" if c == 1 else "colour (3 channels, RGB)"
        raise InputError(f"{name}: is a {found} image ({kind}), the model expects {expected}; "
                         "pass --resize to convert it")
    if resize:
        pixels = _fit(pixels, image_shape)
    if pixels.shape[:2] != (h, w):
        raise InputError(
            f"{name}: is {pixels.shape[1]}x{pixels.shape[0]} pixels, the model expects {w}x{h}; pass --resize to fit it"
        )
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


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
    get 148.1 dB (MSE floored at 1e-10). Float64 (N,)."""
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
