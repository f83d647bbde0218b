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
Writes samples.json (every number) and samples.md (the table) to runs/bench/samples/ or ``--out``
(``--update``: benchmarks/results/).
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

import outdir

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


# -- the sets -----------------------------------------------------------------------------------

def image_sets(model: Any, data: dict[str, np.ndarray], count: int, temperatures: tuple[float, ...],
               seed: int) -> dict[str, tuple[np.ndarray, float]]:
    """Name -> (uint8 images (count, C, H, W), seconds to make them) for every measured set."""
    rng = np.random.default_rng(seed)
    train_pick = rng.choice(len(data["train_images"]), size=count, replace=False)
    posterior_pick = rng.choice(len(data["train_images"]), size=count, replace=False)

    def timed(make: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        images = make()
        return images, time.perf_counter() - start

    def aggregate_posterior() -> np.ndarray:
        mean, logvar = model.encode(data["train_images"][posterior_pick])
        eps = np.random.default_rng(seed).standard_normal(mean.shape, dtype=np.float32)
        return model.decode(mean + np.exp(0.5 * logvar) * eps)

    sets = {
        "training images (floor)": timed(lambda: data["train_images"][train_pick]),
        "reconstructions of the test images": timed(lambda: model.reconstruct(data["test_images"][:count])),
        "decoded z ~ q(z|x) of training images": timed(aggregate_posterior),
    }
    for t in sorted({1.0, *temperatures}, reverse=True):
        sets[f"N(0, I) samples, T={t:g}"] = timed(lambda: model.sample(count, temperature=t, seed=seed, prior="normal"))
    if model.prior == "learned":
        for t in sorted(temperatures, reverse=True):
            sets[f"learned prior samples, T={t:g}"] = timed(
                lambda: model.sample(count, temperature=t, seed=seed, prior="learned"))
    return sets


def measure(classifier: Any, sets: dict[str, tuple[np.ndarray, float]], reference: np.ndarray,
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """FD, precision and recall of every set against the reference (test) images."""
    ref_feats, _ = classify(classifier, reference)
    ref_radii = knn_radii(ref_feats)
    rows = []
    for name, (images, seconds) in sets.items():
        feats, preds = classify(classifier, images)
        precision, recall = precision_recall(ref_feats, feats, ref_radii)
        counts = np.bincount(preds, minlength=10) / len(preds)
        rows.append({"set": name, "images": len(images), "fd": frechet_distance(feats, ref_feats),
                     "precision": precision, "recall": recall, "seconds": seconds,
                     "predicted_class_shares": counts.round(4).tolist()})
        log(f"  {name}: FD {rows[-1]['fd']:.2f}, precision {precision:.3f}, recall {recall:.3f}")
    recon = next(r["fd"] for r in rows if r["set"].startswith("reconstructions"))
    for row in rows:
        row["fd_over_reconstructions"] = row["fd"] / recon
    return rows


def render(result: dict[str, Any]) -> str:
    """The markdown table and the verdict against the goal."""
    lines = [
        f"Sample quality of `{result['model']}` ({result['prior']}), {result['count']:,} images per set against "
        f"the {result['count']:,} Fashion-MNIST test images.",
        f"Features: the 128-d penultimate layer of a small CNN classifier trained here "
        f"({result['classifier']['epochs']} epochs, seed {result['seed']}; test accuracy "
        f"{100 * result['classifier']['test_accuracy']:.2f}%). Not Inception FID: its weights cannot be downloaded "
        f"here, so these distances are comparable only with each other.",
        f"{result['platform']}.",
        "",
        "| set | Fréchet distance | / reconstructions | precision | recall |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['set']} | {row['fd']:.2f} | {row['fd_over_reconstructions']:.2f}x | "
                     f"{row['precision']:.3f} | {row['recall']:.3f} |")
    goal = result["goal"]
    lines += ["", f"Goal: samples within {goal['factor']:g}x of the reconstructions' Fréchet distance. "
              + (f"Best learned-prior set: {goal['best_set']}, {goal['best_ratio']:.2f}x: "
                 + ("met." if goal["met"] else "missed.") if goal.get("best_set") else
                 "The bundle has no learned prior."),
              f"Precision/recall: k-NN manifolds (Kynkäänniemi et al. 2019), k = {K_NEIGHBOURS}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="bundle folder or shipped name (default: the shipped bundle)")
    parser.add_argument("--data", default=str(DATA), help="folder with the Fashion-MNIST IDX files and labels")
    parser.add_argument("--count", type=int, default=10_000, help="images per set (default 10,000; at most 10,000)")
    parser.add_argument("--epochs", type=int, default=6, help="classifier training epochs (default 6)")
    parser.add_argument("--temperatures", default=",".join(f"{t:g}" for t in TEMPERATURES),
                        help="learned-prior temperatures, comma-separated (default 0.7,0.85,1)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the classifier, the picks and the samples")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and onnxruntime threads (default 1: on a shared machine more threads can be far slower)")
    outdir.add_options(parser, "samples")
    args = parser.parse_args()
    out = outdir.folder(args, "samples")  # before the work: a bad --out fails at once
    if not 1 <= args.count <= 10_000:
        raise SystemExit("--count must be between 1 and 10,000 (the test set's size)")
    temperatures = tuple(float(t) for t in args.temperatures.split(","))

    import torch

    import edgevae.runtime as ev

    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(Path(args.data))
    model = ev.load(args.model, threads=args.threads)
    print(f"training the feature classifier ({args.epochs} epochs)", file=sys.stderr)
    classifier = train_classifier(data["train_images"], data["train_labels"], args.epochs, args.seed,
                                  log=lambda s: print(s, file=sys.stderr))
    _, preds = classify(classifier, data["test_images"])
    accuracy = float((preds == data["test_labels"]).mean())
    print(f"classifier test accuracy {100 * accuracy:.2f}%", file=sys.stderr)
    sets = image_sets(model, data, args.count, temperatures, args.seed)
    rows = measure(classifier, sets, data["test_images"][: args.count], log=lambda s: print(s, file=sys.stderr))
    learned = [r for r in rows if r["set"].startswith("learned")]
    best = min(learned, key=lambda r: r["fd"]) if learned else None
    result = {
        "model": model.bundle.name,
        "model_path": str(model.bundle.path),
        "prior": f"learned prior: {model.bundle.prior_kind}" if model.prior == "learned" else "no learned prior",
        "prior_command": model.bundle.manifest.get("prior", {}).get("command"),
        "count": args.count,
        "seed": args.seed,
        "classifier": {"epochs": args.epochs, "test_accuracy": accuracy, "features": 128},
        "rows": rows,
        "goal": {"factor": GOAL_FACTOR, "best_set": best["set"] if best else None,
                 "best_ratio": best["fd_over_reconstructions"] if best else None,
                 "met": bool(best and best["fd_over_reconstructions"] <= GOAL_FACTOR)},
        "platform": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {metadata.version('torch')}, "
                    f"onnxruntime {metadata.version('onnxruntime')}, numpy {np.__version__}",
        "command": "python benchmarks/samples.py " + " ".join(sys.argv[1:]),
    }
    text = render(result)
    (out / "samples.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "samples.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
