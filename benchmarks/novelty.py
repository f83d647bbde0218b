"""Out-of-domain detection: AUROC of edgevae's novelty score against raw negative ELBO.

    python benchmarks/novelty.py --update          # shipped default bundle: benchmarks/results/
    python benchmarks/novelty.py --test-images 500 # quick look

In-domain: the first ``--test-images`` Fashion-MNIST test images. Out-of-domain sets, each made
28x28 gray uint8 (all from Debian packages or made here; nothing is downloaded):

- digits: the 1,797 handwritten digits of scikit-learn's ``digits.csv.gz`` (Debian
  ``python3-sklearn``), 8x8 at 17 levels, scaled to 0..255, resized to 20x20 and centred in
  28x28 like MNIST;
- photos: random square crops (1/12 to 1/3 of the short side) of the photos in Debian packages
  (scikit-learn's china.jpg and flower.jpg, matplotlib's grace_hopper.jpg, gnome-backgrounds'
  wood), in gray, resized to 28x28;
- glyphs: letters and digits rendered by Pillow in the DejaVu and Liberation fonts
  (``fonts-dejavu-core``, ``fonts-liberation``), white on black, random size and offset;
- uniform noise, constant images (random level), and the in-domain images inverted (255 - x).

AUROC (probability that a random out-of-domain image scores above a random in-domain one; 0.5 =
chance) for novelty and for bits_per_dim (the negative ELBO, Nalisnick et al.'s failing score),
and the share of each set above the bundle's novelty threshold. The issue's bar: AUROC >= 0.95 on
real out-of-domain images (digits, photos, glyphs). Writes novelty.{json,md} to runs/bench/novelty/ or
``--out`` (``--update``: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import outdir

TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
DIGITS = Path("/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz")
PHOTOS = [Path("/usr/lib/python3/dist-packages/sklearn/datasets/images/china.jpg"),
          Path("/usr/lib/python3/dist-packages/sklearn/datasets/images/flower.jpg"),
          Path("/usr/share/backgrounds/gnome/wood-l.webp"), Path("/usr/share/backgrounds/gnome/wood-d.webp")]
FONTS = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation")]
REAL_SETS = ("digits", "photos", "glyphs")
BAR_AUROC = 0.95
SIZE = 28


def _matplotlib_photo() -> list[Path]:
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        return [path] if path.exists() else []
    except ImportError:
        return []


def digits() -> np.ndarray:
    """scikit-learn's 8x8 handwritten digits as 28x28 MNIST-style images."""
    with gzip.open(DIGITS, "rt") as f:
        rows = np.loadtxt(f, delimiter=",")
    pixels = (rows[:, :64].reshape(-1, 8, 8) * (255 / 16)).round().astype(np.uint8)
    out = np.zeros((len(pixels), 1, SIZE, SIZE), np.uint8)
    for i, small in enumerate(pixels):
        out[i, 0, 4:24, 4:24] = np.asarray(Image.fromarray(small).resize((20, 20), Image.Resampling.BILINEAR))
    return out


def photos(count: int, rng: np.random.Generator) -> np.ndarray:
    """Random gray crops of the Debian packages' photos, resized to 28x28."""
    sources = [Image.open(p).convert("L") for p in PHOTOS + _matplotlib_photo() if p.exists()]
    out = np.empty((count, 1, SIZE, SIZE), np.uint8)
    for i in range(count):
        image = sources[i % len(sources)]
        short = min(image.size)
        side = int(rng.uniform(short / 12, short / 3))
        x, y = rng.integers(0, image.size[0] - side), rng.integers(0, image.size[1] - side)
        crop = image.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        out[i, 0] = np.asarray(crop)
    return out


def glyphs(count: int, rng: np.random.Generator) -> np.ndarray:
    """Letters and digits in the installed DejaVu and Liberation fonts, white on black."""
    fonts = sorted(p for folder in FONTS if folder.exists() for p in folder.glob("*.ttf"))
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    out = np.empty((count, 1, SIZE, SIZE), np.uint8)
    for i in range(count):
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(14, 26)))
        image = Image.new("L", (SIZE, SIZE), 0)
        draw = ImageDraw.Draw(image)
        char = chars[rng.integers(len(chars))]
        left, top, right, bottom = draw.textbbox((0, 0), char, font=font)
        x = (SIZE - (right - left)) / 2 - left + rng.integers(-2, 3)
        y = (SIZE - (bottom - top)) / 2 - top + rng.integers(-2, 3)
        draw.text((x, y), char, fill=255, font=font)
        out[i, 0] = np.asarray(image)
    return out


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an outside item > score of an inside item), ties counted half (Mann-Whitney U)."""
    ordered = np.sort(inside)
    below = np.searchsorted(ordered, outside, side="left")
    below_or_tied = np.searchsorted(ordered, outside, side="right")
    return float(((below + below_or_tied) / 2).mean() / len(inside))


def run(test_images: int, model_path: str | None, seed: int) -> dict[str, Any]:
    from edgevae.runtime.model import load
    from edgevae.runtime.novelty import score
    from edgevae.training.data import read_idx_images

    rng = np.random.default_rng(seed)
    test = read_idx_images(TEST_IMAGES)[:test_images]
    sets = {
        "digits": digits(),
        "photos": photos(1000, rng),
        "glyphs": glyphs(1000, rng),
        "uniform noise": rng.integers(0, 256, (500, 1, SIZE, SIZE), dtype=np.uint8),
        "constant": np.broadcast_to(rng.integers(0, 256, (256, 1, 1, 1), dtype=np.uint8), (256, 1, SIZE, SIZE)).copy(),
        "inverted Fashion-MNIST": 255 - test[:1000],
    }
    model = load(model_path)
    started = time.perf_counter()
    inside = score(model, test)
    seconds = time.perf_counter() - started
    rows = []
    for name, images in sets.items():
        scores = score(model, images)
        rows.append({
            "set": name, "real": name in REAL_SETS, "images": len(images),
            "auroc_novelty": auroc(inside.novelty, scores.novelty),
            "auroc_nelbo": auroc(inside.bits_per_dim, scores.bits_per_dim),
            "median_bits_per_dim": float(np.median(scores.bits_per_dim)),
            "median_novelty": float(np.median(scores.novelty)),
            "flagged": None if scores.flagged is None else float(scores.flagged.mean()),
        })
        print(f"  {name}: novelty AUROC {rows[-1]['auroc_novelty']:.4f}, NELBO AUROC {rows[-1]['auroc_nelbo']:.4f}",
              file=sys.stderr, flush=True)
    return {
        "model": str(model.bundle.path), "threshold": inside.threshold, "test_images": len(test),
        "test_median_bits_per_dim": float(np.median(inside.bits_per_dim)),
        "test_median_novelty": float(np.median(inside.novelty)),
        "test_flagged": None if inside.flagged is None else float(inside.flagged.mean()),
        "score_images_per_s": len(test) / seconds, "rows": rows, "bar_auroc": BAR_AUROC, "seed": seed,
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs",
        "versions": {p: metadata.version(p) for p in ("onnxruntime", "numpy", "Pillow")},
    }


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def render(result: dict[str, Any]) -> str:
    """The markdown table of a result."""
    real = [r for r in result["rows"] if r["real"]]
    worst = min(r["auroc_novelty"] for r in real)
    threshold = result["threshold"]
    lines = [f"Novelty vs raw likelihood, in-domain = first {result['test_images']} Fashion-MNIST test images. "
             f"Model: {result['model']}; novelty threshold "
             f"{'none recorded' if threshold is None else f'{threshold:.4f}'} (flags "
             f"{_share(result['test_flagged']) or '-'} of these test images). {result['machine']}.", "",
             "| out-of-domain set | images | AUROC novelty | AUROC negative ELBO | median bits/dim | median novelty | flagged |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| (Fashion-MNIST test, in-domain) | {result['test_images']} | | | "
             f"{result['test_median_bits_per_dim']:.3f} | {result['test_median_novelty']:.3f} | "
             f"{_share(result['test_flagged'])} |"]
    for r in result["rows"]:
        lines.append(f"| {r['set']}{' (real)' if r['real'] else ''} | {r['images']} | **{r['auroc_novelty']:.4f}** | "
                     f"{r['auroc_nelbo']:.4f} | {r['median_bits_per_dim']:.3f} | {r['median_novelty']:.3f} | "
                     f"{_share(r['flagged'])} |")
    lines += ["", f"Bar: AUROC >= {result['bar_auroc']} on every real out-of-domain set: worst {worst:.4f}, "
              f"{'met' if worst >= result['bar_auroc'] else 'MISSED'}. Scoring speed: "
              f"{result['score_images_per_s']:,.0f} images/s (4 posterior samples per image)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-images", type=int, default=2000, help="in-domain test images (default 2000)")
    parser.add_argument("--model", default=None, help="bundle (default: the shipped default)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the made sets")
    outdir.add_options(parser, "novelty")
    args = parser.parse_args()
    out = outdir.folder(args, "novelty")  # before the work: a bad --out fails at once
    result = run(args.test_images, args.model, args.seed)
    (out / "novelty.json").write_text(json.dumps(result, indent=2) + "\n")
    table = render(result)
    (out / "novelty.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
