"""Encoder-side latent refinement (issue 22): bytes, PSNR and the ratio to WebP at equal PSNR of every
lossy level, with and without ``--refine``, and what compress costs.

    python benchmarks/refine.py --limit 2000 --update          # benchmarks/results/refine.{md,json}
    python benchmarks/refine.py --model fashion-mnist-codec --limit 300 --beta-per-bit 0.04,0.085,0.2
                                                                # a sweep of the search's settings

For each bundle (default: fashion-mnist-codec and fashion-mnist-codec-hq) and each lossy level:
single-image ``.evz`` files as ``edgevae compress --split`` writes them (7 bytes of header and
CRC included), mean bytes per image and mean PSNR (the decoded container), plain
(``Codec.compress_each``) and refined (``refine=Search(...)``, one row per search setting), and
the ratio to WebP's bytes at the same mean PSNR: WebP's per-image curve (benchmarks/rd.py's
``classical_curve``, Pillow, quality 0..100) interpolated with benchmarks/mosaic.py's
``bytes_at_psnr``, exactly as rd.py compares. Compress speed is ``compress_each`` of all images
in one call at ``--threads`` (default 1), images per second. Writes ``refine.json`` and
``refine.md`` into runs/bench/refine/ (``--update``: benchmarks/results/) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

import edgevae.runtime as ev
from edgevae.runtime.images import psnr
from edgevae.runtime.refine import BETA_PER_BIT, Search
from mosaic import bytes_at_psnr  # benchmarks/mosaic.py: bytes at equal PSNR along a curve
from rd import WEBP_QUALITIES, classical_curve  # benchmarks/rd.py: WebP's per-image curve, as rd.py measures it

import outdir

DEFAULT_MODELS = ("fashion-mnist-codec", "fashion-mnist-codec-hq")


def measure(codec: Any, images: np.ndarray, quality: str, refine: bool | Search) -> dict[str, Any]:
    """One level, plain or refined: mean bytes per single-image file, mean PSNR, compress images/s."""
    start = time.perf_counter()
    files = codec.compress_each(images, quality, refine=refine)
    seconds = time.perf_counter() - start
    decoded = codec.decompress(codec.compress(images, quality, refine=refine)) if refine is False else \
        np.concatenate([codec.decompress(f) for f in files])
    return {"bytes_per_image": float(np.mean([len(f) for f in files])),
            "psnr_db": float(psnr(images, decoded).mean()), "images_per_s": len(images) / seconds}


#: One search setting of the sweep: passes, radius, and beta as a multiple of the level's mean
#: bits (None: the runtime's default, BETA_PER_BIT).
Setting = tuple[int, int, "float | None"]


def run_model(name: str, images: np.ndarray, threads: int, settings: list[Setting],
              webp: list[dict[str, Any]], levels: list[str]) -> dict[str, Any]:
    """Every lossy level of bundle ``name`` (or those in ``levels``): plain, then each setting."""
    codec = ev.Codec(ev.load(name, threads=threads))
    rows = []
    for quality in codec.lossy_qualities:
        if levels and quality not in levels:
            continue
        table = codec.tables.lookup(quality)
        plain = measure(codec, images, quality, False)
        plain["webp_bytes"], plain["webp_how"] = bytes_at_psnr(webp, plain["psnr_db"])
        row = {"quality": quality, "step_factor": table.step_factor, "plain": plain, "refined": []}
        for passes, radius, factor in settings:
            per_bit = BETA_PER_BIT if factor is None else factor
            search = Search(passes=passes, radius=radius, beta=None if factor is None else factor * table.train_bits_per_image)
            got = measure(codec, images, quality, search)
            got.update(passes=passes, radius=radius, beta=per_bit * table.train_bits_per_image, beta_per_bit=per_bit,
                       webp_bytes=bytes_at_psnr(webp, got["psnr_db"])[0], webp_how=bytes_at_psnr(webp, got["psnr_db"])[1])
            row["refined"].append(got)
            print(f"{name} {quality}: plain {plain['bytes_per_image']:.2f} B {plain['psnr_db']:.2f} dB "
                  f"(1/{plain['webp_bytes'] / plain['bytes_per_image']:.2f}); refined p{passes} r{radius} "
                  f"beta/bit {per_bit:.3f}: {got['bytes_per_image']:.2f} B {got['psnr_db']:.2f} dB "
                  f"(1/{got['webp_bytes'] / got['bytes_per_image']:.2f}), {got['images_per_s']:.0f} images/s",
                  flush=True)
        rows.append(row)
    return {"model": name, "levels": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Made by `{result['command']}` in {result['seconds']} s; {result['images']} Fashion-MNIST test "
             f"images; {result['machine']}; {result['threads']} onnxruntime thread(s).", "",
             "Single-image files (7 bytes of header and CRC included). *WebP ratio*: edgevae's bytes over WebP's "
             "at the same mean PSNR (per-image WebP files, quality 0..100, interpolated as in rd.md); "
             "1/x means x times smaller. Speed: `Codec.compress_each` of all images, images/s.", ""]
    for model in result["models"]:
        lines += [f"**{model['model']}**", "",
                  "| level | search | bytes/image | PSNR (dB) | WebP bytes at that PSNR | WebP ratio | compress images/s |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for row in model["levels"]:
            p = row["plain"]
            lines.append(f"| {row['quality']} | rounding (default) | {p['bytes_per_image']:.2f} | {p['psnr_db']:.2f} | "
                         f"{p['webp_bytes']:.1f}{_below(p)} | 1/{p['webp_bytes'] / p['bytes_per_image']:.2f} | "
                         f"{p['images_per_s']:,.0f} |")
            for r in row["refined"]:
                lines.append(f"| | refine: {r['passes']} passes, +-{r['radius']}, beta {r['beta']:.1f} bits/dB "
                             f"({r['beta_per_bit']:.3f}/bit) | {r['bytes_per_image']:.2f} | {r['psnr_db']:.2f} | "
                             f"{r['webp_bytes']:.1f}{_below(r)} | 1/{r['webp_bytes'] / r['bytes_per_image']:.2f} | "
                             f"{r['images_per_s']:,.0f} |")
        lines.append("")
    return "\n".join(lines)


def _below(row: dict[str, Any]) -> str:
    return " (its smallest file: below WebP's PSNR range)" if row["webp_how"] == "below_range" else ""


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help=f"Bundle name or folder (repeatable; default: {', '.join(DEFAULT_MODELS)}).")
    parser.add_argument("--data", default=None, help="Folder with the Fashion-MNIST IDX files.")
    parser.add_argument("--limit", type=int, default=2000, help="The first N test images (default 2000).")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1).")
    parser.add_argument("--levels", default="", help="Comma-separated level names (default: every lossy level).")
    parser.add_argument("--passes", default="2", help="Comma-separated passes to try (default 2).")
    parser.add_argument("--radius", default="1", help="Comma-separated radii to try (default 1).")
    parser.add_argument("--beta-per-bit", default="",
                        help=f"Comma-separated beta / level bits to try (default: the runtime's, {BETA_PER_BIT}).")
    outdir.add_options(parser, "refine")
    args = parser.parse_args()
    out = outdir.folder(args, "refine")

    from edgevae.training.data import load_fashion_mnist

    images = load_fashion_mnist(args.data).test[: args.limit]
    started = time.perf_counter()
    webp = classical_curve(images, "WEBP", WEBP_QUALITIES)
    factors: list[float | None] = list(_floats(args.beta_per_bit)) or [None]
    settings = [(int(p), int(r), f) for p in _floats(args.passes) for r in _floats(args.radius) for f in factors]
    result: dict[str, Any] = {
        "command": "python benchmarks/refine.py " + " ".join(sys.argv[1:]), "images": len(images),
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "webp": webp, "models": []}
    levels = [v for v in args.levels.split(",") if v]
    for name in args.model or DEFAULT_MODELS:
        result["models"].append(run_model(name, images, args.threads, settings, webp, levels))
    result["seconds"] = round(time.perf_counter() - started, 1)
    (out / "refine.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "refine.md").write_text(text)
    print(text)
    print(f"wrote {out / 'refine.json'}, {out / 'refine.md'} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
