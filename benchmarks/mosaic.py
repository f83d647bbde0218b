"""Helpers shared by the rate-distortion benchmarks (rd.py, lossless.py, quality_range.py).

- :func:`tile` / :func:`untile`: all images of a set as one picture, so that a classical codec
  stores the whole set in one file (its headers paid once), and the tiles cut back out of the
  decoded picture to measure each image;
- :func:`bytes_at_psnr`: a codec's bytes at a given mean PSNR, read off its measured curve.

The scripts import this module by name: running ``python benchmarks/X.py`` puts benchmarks/ on
``sys.path``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def tile(images: np.ndarray) -> tuple[np.ndarray, int]:
    """(N, 1, h, w) uint8 -> one (rows*h, cols*w) picture, row-major, zero-padded; and the column count.

    cols = ceil(sqrt(N)), rows = ceil(N / cols): 10,000 Fashion-MNIST images make a 2800x2800 picture.
    """
    n, _, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = np.zeros((rows * h, cols * w), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i, 0]
    return canvas, cols


def untile(canvas: np.ndarray, n: int, cols: int, h: int, w: int) -> np.ndarray:
    """Inverse of :func:`tile`: the first ``n`` tiles of a (decoded) picture, (N, 1, h, w)."""
    return np.stack([canvas[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w]
                     for i in range(n)])[:, None]


def bytes_at_psnr(curve: list[dict[str, Any]], target: float) -> tuple[float, str]:
    """Mean bytes per image the codec needs for mean PSNR ``target`` (dB) and how it was found.

    ``curve`` holds rows with ``psnr_db`` and ``bytes_per_image``. It is made monotone first: at
    each PSNR, the smallest size reaching at least it; then interpolated linearly in PSNR. Below
    the curve's lowest PSNR: its smallest mean file and ``"below_range"``; above its highest: NaN
    and ``"above_range"``; else ``"interpolated"``.
    """
    pts = sorted((r["psnr_db"], r["bytes_per_image"]) for r in curve)
    p = np.array([x for x, _ in pts])
    b = np.minimum.accumulate(np.array([y for _, y in pts])[::-1])[::-1]
    if target <= p[0]:
        return float(b.min()), "below_range"
    if target > p[-1]:
        return float("nan"), "above_range"
    return float(np.interp(target, p, b)), "interpolated"
