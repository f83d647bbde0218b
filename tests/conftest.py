"""Shared fixtures: a tiny synthetic image set, a tiny trained run and its exported bundle.

Everything here is made on the fly in a few seconds; nothing is downloaded. The tiny model is
not meant to be good, only real: trained by the same code path, exported by the same exporter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_SHAPE = (1, 28, 28)


def synthetic_images(n: int, seed: int = 0, shape: tuple[int, int, int] = TINY_SHAPE) -> np.ndarray:
    """uint8 (n, C, H, W): bright rectangles of random size and level on a black background."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    out = np.zeros((n, c, h, w), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(2, h // 2, size=2)
        y1, x1 = y0 + rng.integers(6, h // 2), x0 + rng.integers(6, w // 2)
        out[i, :, y0:y1, x0:x1] = rng.integers(80, 256, size=(c, 1, 1))
        out[i] = np.clip(out[i].astype(int) + rng.integers(0, 20, size=(c, h, w)) * (out[i] > 0), 0, 255)
    return out


def write_pngs(images: np.ndarray, folder: Path) -> list[Path]:
    """Save uint8 (N, C, H, W) images as PNG files named 000.png, 001.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:03d}.png"
        mode = "L" if image.shape[0] == 1 else "RGB"
        Image.fromarray(image[0] if mode == "L" else image.transpose(1, 2, 0), mode=mode).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 160 synthetic 28x28 gray PNGs in two sub-folders (a training data set)."""
    root = tmp_path_factory.mktemp("images")
    images = synthetic_images(160)
    write_pngs(images[:80], root / "a")
    write_pngs(images[80:], root / "b")
    return root


@pytest.fixture(scope="session")
def tiny_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: a small VAE trained 2 epochs on ``image_folder`` by ``train``."""
    from edgevae.training.data import load_dataset
    from edgevae.training.model import ModelConfig
    from edgevae.training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run") / "tiny"
    data = load_dataset(str(image_folder), TINY_SHAPE)
    model_config = ModelConfig(image_shape=TINY_SHAPE, latent_dim=8, channels=(8, 16, 16), mixture_components=3)
    config = TrainConfig(dataset=str(image_folder), epochs=2, batch_size=32, warmup_steps=5, seed=0)
    train(data, model_config, config, run, log=lambda _: None)
    return run


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_run`` evaluated (k=4) and exported: a complete, valid bundle folder."""
    from edgevae.training.evaluate import evaluate_run
    from edgevae.training.export import export_run

    evaluate_run(tiny_run, k=4)
    bundle = tmp_path_factory.mktemp("bundle") / "tiny"
    export_run(tiny_run, bundle)
    return bundle


@pytest.fixture(scope="session")
def tiny_model(tiny_bundle: Path):
    """The runtime model of ``tiny_bundle``."""
    from edgevae.runtime import load

    return load(tiny_bundle)
