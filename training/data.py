"""Training data: Fashion-MNIST from its IDX files, or any folder of images.

Fashion-MNIST is looked for in ``--data DIR``, then ``$EDGEVAE_DATA``, then the folder
Debian's package ``dataset-fashion-mnist`` installs. Nothing is ever downloaded. It is held in
memory as uint8 arrays of shape (N, C, H, W) (:class:`Dataset`).

A folder of images is either read into memory the same way (:func:`load_image_folder`, for
evaluation and export) or streamed from disk (:func:`open_image_folder` -> :class:`ImageFolder`,
for training): a DataLoader's workers decode, resize and crop each image when a batch needs it.
Both forms skip unreadable files (reported by name), hold out the same test images and have the
same fingerprint.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from edgevae.runtime.errors import DataError, InputError
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

#: (C, H, W) of a Fashion-MNIST image.
FASHION_MNIST_SHAPE = (1, 28, 28)

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


#: Share of a folder's images held out as its test set (at least one image).
TEST_FRACTION = 0.1


class ImageFiles:
    """Image files read on demand: decode, convert, resize and centre-crop to ``image_shape``.

    A map-style data set for torch's DataLoader (its workers decode in parallel). An item is
    keyed by ``(key, index)``, and yields ``(key, image)`` with ``image`` uint8 (C, H, W), or
    ``(key, message)`` naming the file when it cannot be read, so one bad file never stops a
    worker (or the process that waits for it).
    """

    def __init__(self, files: Sequence[Path], image_shape: tuple[int, int, int]) -> None:
        self.files = tuple(files)
        self.image_shape = tuple(image_shape)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[Any, int]) -> tuple[Any, np.ndarray | str]:
        key, index = item
        try:
            return key, load_image(self.files[index], self.image_shape, resize=True)  # type: ignore[arg-type]
        except InputError as e:  # names the file and the problem
            return key, str(e)


@dataclass(frozen=True)
class ImageFolder:
    """A folder data set that stays on disk: the train and test files, read batch by batch.

    Same split, same fingerprint as :func:`load_image_folder` holding the same folder in memory.
    """

    name: str
    train: ImageFiles
    test: ImageFiles
    fingerprint: str
    #: One message per file left out because it could not be read.
    skipped: tuple[str, ...] = ()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return self.train.image_shape  # type: ignore[return-value]


#: What :func:`stream_batches` yields per batch: the keys of the images read, those images as
#: a uint8 tensor (N, C, H, W), and ``(key, message)`` for each file that could not be read.
Batch = tuple[list[Any], Any, list[tuple[Any, str]]]


def collate_images(image_shape: tuple[int, int, int], items: list[tuple[Any, np.ndarray | str]]) -> Batch:
    """DataLoader collate of :class:`ImageFiles` items into a :data:`Batch`."""
    import torch

    keys = [key for key, image in items if not isinstance(image, str)]
    arrays = [image for _, image in items if not isinstance(image, str)]
    bad = [(key, image) for key, image in items if isinstance(image, str)]
    stacked = np.stack(arrays) if arrays else np.zeros((0, *image_shape), np.uint8)
    return keys, torch.from_numpy(stacked), bad


def stream_batches(files: ImageFiles, batches: Sequence[Sequence[tuple[Any, int]]], workers: int) -> Iterator[Batch]:
    """Decode ``batches`` (lists of ``(key, file index)``) in order, ``workers`` processes ahead.

    Yields a :data:`Batch` per batch; ``workers=0`` decodes in this process.
    """
    import torch
    from torch.utils.data import DataLoader

    # Workers start from a forkserver, not by forking this process: a fork copies whatever locks
    # other threads hold at that instant (the DataLoader's own queue-feeder threads, an app's or a
    # test runner's threads), and a worker that needs one waits forever (seen: a hung CliRunner
    # test). The cost is ~1 s of start-up per worker and epoch; an epoch of a real folder takes minutes.
    context = None
    if workers:
        import multiprocessing

        context = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None
    # A generator of its own: a DataLoader draws its workers' base seed from the one it is given,
    # by default torch's global generator, which would shift the training noise drawn after it.
    loader = DataLoader(files, batch_sampler=batches, num_workers=workers,  # type: ignore[arg-type]
                        collate_fn=functools.partial(collate_images, files.image_shape),
                        prefetch_factor=4 if workers else None, generator=torch.Generator(),
                        multiprocessing_context=context)
    yield from loader


def _digest(image: np.ndarray) -> bytes:
    return hashlib.sha256(image.tobytes()).digest()


def _split_folder(root: Path, digests: Sequence[bytes | None],
                  image_shape: tuple[int, int, int], seed: int, test_fraction: float) -> tuple[list[int], list[int], str]:
    """The rule every folder data set follows: readable files in path order, a ``seed``-ed
    permutation, the first ``test_fraction`` (at least one) held out. ``digests``: per file in path
    order, the sha256 of its pixels, None if unreadable. Returns the train and test indices into
    the files and the fingerprint: sha256 over each split's shape and the sha256 of
    every image's pixels in split order."""
    good = [i for i, d in enumerate(digests) if d is not None]
    if len(good) < 2:
        raise DataError(f"need at least 2 readable images under {root}, found {len(good)}")
    order = np.random.default_rng(seed).permutation(len(good))
    n_test = max(1, int(round(test_fraction * len(good))))
    test = [good[i] for i in order[:n_test]]
    train = [good[i] for i in order[n_test:]]
    fingerprint = hashlib.sha256()
    for part in (train, test):
        fingerprint.update(str((len(part), *image_shape)).encode())
        for i in part:
            fingerprint.update(digests[i])  # type: ignore[arg-type]
    return train, test, "sha256:" + fingerprint.hexdigest()


def list_image_files(folder: str | Path) -> list[Path]:
    """Every PNG/JPEG under ``folder`` (recursive) in path order; DataError if there are not 2."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    files = find_image_files(root)
    if len(files) < 2:
        raise DataError(f"need at least 2 images under {root}, found {len(files)}")
    return files


def _folder_name(root: Path) -> str:
    return root.name or str(root)


def load_image_folder(
    folder: str | Path,
    image_shape: tuple[int, int, int],
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """Every PNG/JPEG under ``folder`` (recursive), resized and centre-cropped to ``image_shape``, in memory.

    A seeded shuffle holds out ``test_fraction`` of the images (at least one) as the test set.
    A file that cannot be read is left out and reported by name to ``log`` (default: a warning).
    """
    root = Path(folder)
    files = list_image_files(root)
    images: list[np.ndarray | None] = []
    for path in files:
        try:
            images.append(load_image(path, image_shape, resize=True))
        except InputError as e:
            _report_skipped(str(e), log)
            images.append(None)
    digests = [_digest(image) if image is not None else None for image in images]
    train, test, fingerprint = _split_folder(root, digests, image_shape, seed, test_fraction)
    return Dataset(_folder_name(root), np.stack([images[i] for i in train]), np.stack([images[i] for i in test]),
                   fingerprint)


def _report_skipped(message: str, log: Callable[[str], None] | None) -> None:
    text = f"skipping {message}"
    if log is None:
        warnings.warn(text, stacklevel=3)
    else:
        log(text)


class Collectives(Protocol):
    """What :func:`open_image_folder` needs of the processes that share the work (see distributed.Context)."""

    rank: int
    world_size: int

    def share(self, count: int) -> tuple[int, int]: ...
    def broadcast(self, obj: Any) -> Any: ...
    def all_gather(self, obj: Any) -> list[Any]: ...


def open_image_folder(
    folder: str | Path,
    image_shape: tuple[int, int, int],
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    workers: int = 0,
    processes: Collectives | None = None,
    progress: Callable[[int, str], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> ImageFolder:
    """The streaming form of :func:`load_image_folder`: file lists, no pixels kept in memory.

    Every image is decoded once here, to leave out unreadable files (each reported by name to
    ``log``) and to fingerprint the data. With ``processes`` (the ranks of a distributed run),
    rank 0 lists the folder, every rank decodes its share with ``workers`` loader processes,
    and all ranks end with the same lists. ``progress(total, label)`` as for training.
    """
    root = Path(folder)
    listing: list[Path] | DataError
    if processes is None or processes.rank == 0:
        try:
            listing = list_image_files(root)
        except DataError as e:
            listing = e
    else:
        listing = []
    if processes is not None:
        listing = processes.broadcast(listing)
    if isinstance(listing, DataError):
        raise listing
    files = listing
    start, stop = processes.share(len(files)) if processes is not None else (0, len(files))
    mine: dict[int, bytes | str] = {}
    batches = [[(i, i) for i in range(s, min(s + 64, stop))] for s in range(start, stop, 64)]
    bar_cm = progress(stop - start, f"checking {len(files)} images") if progress else None
    bar = bar_cm.__enter__() if bar_cm else None
    try:
        for keys, images, bad in stream_batches(ImageFiles(files, image_shape), batches, workers):
            mine.update((key, _digest(image.numpy())) for key, image in zip(keys, images))
            mine.update(bad)
            if bar is not None:
                bar.update(len(keys) + len(bad))
    finally:
        if bar_cm:
            bar_cm.__exit__(None, None, None)
    results = [mine[i] for i in range(start, stop)]
    if processes is not None:
        results = [r for part in processes.all_gather(results) for r in part]
    digests: list[bytes | None] = []
    skipped: list[str] = []
    for result in results:
        if isinstance(result, str):
            skipped.append(result)
            _report_skipped(result, log)
            digests.append(None)
        else:
            digests.append(result)
    train, test, fingerprint = _split_folder(root, digests, image_shape, seed, test_fraction)
    return ImageFolder(_folder_name(root), ImageFiles([files[i] for i in train], image_shape),
                       ImageFiles([files[i] for i in test], image_shape), fingerprint, tuple(skipped))


def load_dataset(
    spec: str,
    image_shape: tuple[int, int, int] | None = None,
    data_dir: str | Path | None = None,
    seed: int = 0,
) -> Dataset:
    """``spec`` is ``fashion-mnist`` or a folder of images (resized to ``image_shape``), in memory."""
    if spec == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    return load_image_folder(spec, image_shape or (1, 28, 28), seed=seed)


def bundle_dataset(bundle: Any, data_dir: str | Path | None = None) -> Dataset:
    """The data set an exported bundle was trained on, split as its training run split it (the
    manifest records the data set and the seed); what codec tables, priors, denoisers and novelty
    thresholds are fitted on. InputError if the manifest does not say."""
    train_config = (bundle.manifest.get("training") or {}).get("train_config") or {}
    if "dataset" not in train_config:
        raise InputError(f"{bundle.path}: model.json does not record the data set it was trained on "
                         "(training.train_config.dataset)")
    return load_dataset(train_config["dataset"], bundle.image_shape, data_dir, seed=train_config.get("seed", 0))


def open_dataset(
    spec: str,
    image_shape: tuple[int, int, int],
    data_dir: str | Path | None = None,
    seed: int = 0,
    workers: int = 0,
    processes: Collectives | None = None,
    progress: Callable[[int, str], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> Dataset | ImageFolder:
    """The training form of ``spec``: Fashion-MNIST in memory, a folder streamed from disk.

    ``processes``: the ranks of a distributed run, which share the one-off check of a folder
    (see :func:`open_image_folder`); every rank must call this.
    """
    if spec == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    return open_image_folder(spec, image_shape, seed=seed, workers=workers, processes=processes,
                             progress=progress, log=log)
