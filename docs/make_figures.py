"""Regenerate README's pictures in docs/img/ from the shipped model (runtime only, no torch).

    python docs/make_figures.py

samples.png: 64 samples (seed 0) from the bundle's learned prior (prior.onnx) when it has one;
samples-normal.png: the same seed through N(0, I), for comparison. reconstructions.png: examples/ (top row) over their
reconstructions (middle) and their lossy round trip at the default quality (bottom).
interpolation.png: sneaker -> ankle boot in 10 steps. All deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import edgevae.runtime as ev
from edgevae.runtime.images import grid, read_images, to_pil

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
EXAMPLES = ROOT / "examples"
#: Pictures are small (28x28 tiles); enlarging them keeps them crisp in a browser.
SCALE = 3


def save(picture: np.ndarray, name: str) -> None:
    """Write a uint8 (C, H, W) picture, enlarged SCALE times with nearest-neighbour pixels."""
    image = to_pil(picture)
    image.resize((image.width * SCALE, image.height * SCALE), resample=0).save(OUT / name)
    print(OUT / name)


def main() -> None:
    """Write the four figures."""
    OUT.mkdir(parents=True, exist_ok=True)
    model = ev.load()
    codec = ev.Codec(model)
    save(grid(model.sample(64, seed=0)), "samples.png")
    save(grid(model.sample(64, seed=0, prior="normal")), "samples-normal.png")
    images, _ = read_images(sorted(EXAMPLES.glob("*.png")), model.image_shape)
    rows = np.concatenate([images, model.reconstruct(images), codec.decompress(codec.compress(images))])
    save(grid(rows, columns=len(images)), "reconstructions.png")
    ends = [read_images([EXAMPLES / f"{name}.png"], model.image_shape)[0][0] for name in ("sneaker", "ankle-boot")]
    save(grid(model.interpolate(ends[0], ends[1], steps=10), columns=10), "interpolation.png")


if __name__ == "__main__":
    main()
