"""Sample quality of a bundle: Fréchet distance and k-NN precision/recall of generated images
against the Fashion-MNIST test set, in the feature space of a small classifier trained here.

    python benchmarks/samples.py                        # shipped bundle, 10,000 images per set, ~6 min
    python benchmarks/samples.py --model /tmp/b --count 2000 --epochs 2   # a quick look

Inception-based FID needs Inception-v3 weights, which this project cannot download (nothing is
fetched at run time), and Inception features are a poor fit for 28x28 gray garments anyway. So
the benchmark trains its own feature extractor, seeded: a small CNN classifier on the 60,000
Fashion-MNIST training images (its test accuracy is stated with the results), and measures in
its 128-d penultimate layer (after ReLU):

- Fréchet distance (FD) between Gaussians fitted to the features of a set and of the 10,000 test
  images (Heusel et al. 2017's formula; "FID" only when the features are Inception's);
- precision and recall with k-NN manifolds (Kynkäänniemi et al. 2019, k = 3): precision is the
  share of a set's images inside the union of the test images' k-NN balls (realism), recall the
  share of test images inside the union of the set's balls (coverage).

Sets, ``--count`` images each (default 10,000): training images (against the test set: the
floor), reconstructions of the test images (decoder's mean pixels of the posterior means), the
aggregate posterior (decoding z ~ q(z|x) of training images: what a perfect prior over z could
reach), N(0, I) samples, and the bundle's learned prior (``prior.onnx``) at several
temperatures. Every generated set is the runtime's own output (``EdgeVAE.sample``).

Needs torch (the classifier) and the Fashion-MNIST IDX files (/usr/share/datasets/fashion-mnist).
Writes benchmarks/results/samples.json (every number) and samples.md (the table).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import struct
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = Path("/usr/share/datasets/fashion-mnist")

#: The issue's goal: samples within this factor of the reconstructions' Fréchet distance.
GOAL_FACTOR = 3.0
#: Neighbours defining the k-NN manifold radius (Kynkäänniemi et al. 2019 use k = 3).
K_NEIGHBOURS = 3
#: Temperatures of the learned prior that are measured by default.
TEMPERATURES = (0.7, 0.85, 1.0)
#: Rows of the distance matrix computed at once (bounds memory at ~rows x N x 4 bytes).
DIST_CHUNK = 1000


# -- data ---------------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (images: uint8 (N, 1, H, W); labels: uint8 (N,)), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">I", raw[:4])[0]
    if magic == 0x803:
        n, h, w = struct.unpack(">III", raw[4:16])
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, h, w).copy()
    if magic == 0x801:
        return np.frombuffer(raw, np.uint8, offset=8).copy()
    raise SystemExit(f"{path}: not an IDX ubyte file")


def load_fashion_mnist(folder: Path) -> dict[str, np.ndarray]:
    """Training and test images and labels."""
    def find(stem: str) -> Path:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
        raise SystemExit(f"{folder}: no {stem}[.gz]; install Debian's dataset-fashion-mnist or pass --data")

    return {
        "train_images": read_idx(find("train-images-idx3-ubyte")),
        "train_labels": read_idx(find("train-labels-idx1-ubyte")),
        "test_images": read_idx(find("t10k-images-idx3-ubyte")),
        "test_labels": read_idx(find("t10k-labels-idx1-ubyte")),
    }


# -- the feature extractor ------------------------------------------------------------------------

def build_classifier() -> Any:
    """Small CNN: conv5x5(16)-pool-conv5x5(32)-pool-fc(128) features -> fc(10)."""
    from torch import nn

    features = nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
    )
    return nn.Sequential(features, nn.Dropout(0.3), nn.Linear(128, 10))


def _as_input(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(images).float().div_(127.5).sub_(1.0)


def train_classifier(images: np.ndarray, labels: np.ndarray, epochs: int, seed: int,
                     log: Callable[[str], None] = print) -> Any:
    """The classifier trained with Adam on ``images`` (uint8 (N, 1, H, W)), seeded."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = build_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_per_epoch = (len(images) + 127) // 128
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=epochs * steps_per_epoch)
    x_all, y_all = _as_input(images), torch.from_numpy(labels.astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        start, total = time.perf_counter(), 0.0
        for idx in torch.randperm(len(images), generator=generator).split(128):
            loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        log(f"  classifier epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f} "
            f"({time.perf_counter() - start:.0f} s)")
    return model.eval()


def classify(model: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features float64 (N, 128), predicted labels (N,)) for uint8 images."""
    import torch

    feats, preds = [], []
    with torch.inference_mode():
        for start in range(0, len(images), 1000):
            f = model[0](_as_input(images[start : start + 1000]))
            feats.append(f.double().numpy())
            preds.append(model[2](f).argmax(1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


# -- the metrics ------------------------------------------------------------------------------

def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two
    feature sets (N, F). The trace of the matrix square root is the sum of the square roots of
    the eigenvalues of S_a S_b (real and >= 0 for covariance matrices; tiny negatives from
    rounding are clipped)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s_a @ s_b)
    covmean_trace = float(np.sqrt(np.clip(eig.real, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * covmean_trace)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0)


def knn_radii(feats: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = np.empty(len(feats))
    for start in range(0, len(feats), DIST_CHUNK):
        d = _sq_dists(feats[start : start + DIST_CHUNK], feats)
        radii[start : start + DIST_CHUNK] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return radii


def coverage(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``queries`` inside at least one ball (centre, squared radius)."""
    inside = 0
    for start in range(0, len(queries), DIST_CHUNK):
        d = _sq_dists(queries[start : start + DIST_CHUNK], centres)
        inside += int((d <= radii[None, :]).any(1).sum())
    return inside / len(queries)


def precision_recall(real: np.ndarray, fake: np.ndarray, real_radii: np.ndarray,
                     k: int = K_NEIGHBOURS) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019: precision = fake inside real's manifold, recall = real inside fake's."""
    return coverage(fake, real, real_radii), coverage(real, fake, knn_radii(fake, k))
