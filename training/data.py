"""Training data: Fashion-MNIST from its IDX files, or any folder of images.

Fashion-MNIST is looked for in ``--data DIR``, then ``$EDGEVAE_DATA``, then the folder
Debian's package ``dataset-fashion-mnist`` installs. Nothing is ever downloaded.
All data sets are held in memory as uint8 arrays of shape (N, C, H, W).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevae.runtime.errors import DataError
from edgevae.runtime.images import find_image_files, load_image

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

#: Environment variable naming a folder with the Fashion-MNIST IDX files.
DATA_ENV = "EDGEVAE_DATA"

FASHION_MNIST_FILES = {
    "train": "train-images-idx3-ubyte",
    "test": "t10k-images-idx3-ubyte",
}

HOW_TO_GET = (
    "Fashion-MNIST not found. Install it with 'apt-get install dataset-fashion-mnist' "
    f"(files land in {DEBIAN_FASHION_MNIST}), or put the official IDX files "
    "(train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]) in a folder and pass "
    f"--data DIR or set ${DATA_ENV}."
)

#: IDX magic for unsigned bytes with three dimensions.
IDX_UBYTE_3D = 0x00000803


@dataclass(frozen=True)
class Dataset:
    """A train/test pair of uint8 image arrays (N, C, H, W) and where they came from."""

    name: str
    train: np.ndarray
    test: np.ndarray
    fingerprint: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


def read_idx_images(path: Path) -> np.ndarray:
    """Read an IDX3 ubyte file (optionally gzipped) into a uint8 array (N, 1, H, W)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 16:
        raise DataError(f"{path} is too short to be an IDX image file")
    magic, n, h, w = struct.unpack(">IIII", raw[:16])
    if magic != IDX_UBYTE_3D or len(raw) != 16 + n * h * w:
        raise DataError(f"{path} is not a valid IDX3 ubyte image file")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, h, w).copy()


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_folder(data_dir: str | Path | None = None) -> Path:
    """The first of ``data_dir``, ``$EDGEVAE_DATA``, Debian's folder holding both IDX files."""
    candidates = [Path(p) for p in (data_dir, os.environ.get(DATA_ENV)) if p]
    candidates.append(DEBIAN_FASHION_MNIST)
    for folder in candidates:
        if all(_find_idx(folder, stem) for stem in FASHION_MNIST_FILES.values()):
            return folder
    raise DataError(HOW_TO_GET)


def _fingerprint(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(str(a.shape).encode())
        digest.update(a.tobytes())
    return "sha256:" + digest.hexdigest()


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    """Fashion-MNIST's 60,000 training and 10,000 test images, (N, 1, 28, 28) uint8."""
    folder = fashion_mnist_folder(data_dir)
    train = read_idx_images(_find_idx(folder, FASHION_MNIST_FILES["train"]))  # type: ignore[arg-type]
    test = read_idx_images(_find_idx(folder, FASHION_MNIST_FILES["test"]))  # type: ignore[arg-type]
    return Dataset("fashion-mnist", train, test, _fingerprint([train, test]))


def load_image_folder(
    folder: str | Path,
    image_shape: tuple[int, int, int],
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Every PNG/JPEG under ``folder`` (recursive), resized and centre-cropped to ``image_shape``.

    A seeded shuffle holds out ``test_fraction`` of the images (at least one) as the test set.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    files = find_image_files(root)
    if len(files) < 2:
        raise DataError(f"need at least 2 images under {root}, found {len(files)}")
    images = np.stack([load_image(p, image_shape, resize=True) for p in files])
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = max(1, int(round(test_fraction * len(images))))
    test, train = images[order[:n_test]], images[order[n_test:]]
    return Dataset(root.name or str(root), train, test, _fingerprint([train, test]))


def load_dataset(
    spec: str,
    image_shape: tuple[int, int, int] | None = None,
    data_dir: str | Path | None = None,
    seed: int = 0,
) -> Dataset:
    """``spec`` is ``fashion-mnist`` or a folder of images (resized to ``image_shape``)."""
    if spec == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    return load_image_folder(spec, image_shape or (1, 28, 28), seed=seed)
