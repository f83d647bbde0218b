"""Issue 22's lossless bars, measured in one run: gross bits/dim of one lossless container of the
Fashion-MNIST test set, the exact round trip, and compress / decompress speed, for today's
lossless bundles and the stronger ones, side by side.

    python benchmarks/stronger.py                        # every bundle below, 10,000 images, 2 cores
    python benchmarks/stronger.py --limit 2000 --bundles fashion-mnist-exact,fashion-mnist-context
    python benchmarks/stronger.py --groups-only           # only the per-group table (no coding, no timing)

Speed is images per second of wall clock for the whole container (the coder runs its two lanes
itself; models loaded with one onnxruntime thread, as the CLI does for --lossless), measured in
rounds that alternate the bundles so that the machine's load falls on each alike; the speed ratio
of each bundle to the first (today's lossless default) is the figure the bar is about (>= 0.5x).
The bits/dim come from the first round's containers, which must decode to the exact pixels.
For each bundle with pixel groups, a second table gives what the context net buys per group: bits
per pixel of the group under the decoder alone and with the context net, on the first
--groups-images test images at one posterior sample each (seed 0).
Writes stronger.json and stronger.md (runs/bench/stronger/, or benchmarks/results/ with --update).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib import metadata

import numpy as np

import outdir
import edgevae.runtime as ev
from edgevae.runtime.bundle import shipped_bundles

#: The issue's bars (issue 22).
BAR_BITS_PER_DIM = 3.0
BAR_SPEED_RATIO = 0.5
#: Today's lossless default first: the speed ratios are against it.
DEFAULT_BUNDLES = ("fashion-mnist-exact", "fashion-mnist", "fashion-mnist-context", "fashion-mnist-context2",
                   "fashion-mnist-context2-exact")


def measure(bundles: list[str], images: np.ndarray, rounds: int) -> dict[str, dict]:
    codecs = {name: ev.LosslessCodec(ev.load(shipped_bundles().get(name, name), threads=1)) for name in bundles}
    out: dict[str, dict] = {name: {"compress_s": [], "decompress_s": []} for name in bundles}
    for r in range(rounds):
        for name in (bundles if r % 2 == 0 else bundles[::-1]):  # alternate the order: load falls alike
            codec = codecs[name]
            started = time.perf_counter()
            data = codec.compress(images)
            middle = time.perf_counter()
            back = codec.decompress(data)
            done = time.perf_counter()
            entry = out[name]
            entry["compress_s"].append(middle - started)
            entry["decompress_s"].append(done - middle)
            if r == 0:
                entry["bytes"] = len(data)
                entry["gross_bits_per_dim"] = 8 * len(data) / images.size
                entry["exact"] = bool(np.array_equal(back, images))
                manifest = codec.model.bundle.manifest
                entry["pixel_groups"] = manifest.get("pixel_groups", 1)
                entry["arithmetic"] = manifest.get("arithmetic", "float")
                entry["bundle_mb"] = sum(p.stat().st_size for p in codec.model.bundle.path.iterdir()) / 1e6
            print(f"round {r + 1}/{rounds} {name}: {len(images) / (middle - started):,.0f} / "
                  f"{len(images) / (done - middle):,.0f} images/s", flush=True)
    for entry in out.values():
        entry["compress_images_per_s"] = len(images) / float(np.median(entry["compress_s"]))
        entry["decompress_images_per_s"] = len(images) / float(np.median(entry["decompress_s"]))
    first = out[bundles[0]]
    for entry in out.values():
        entry["compress_ratio"] = entry["compress_images_per_s"] / first["compress_images_per_s"]
        entry["decompress_ratio"] = entry["decompress_images_per_s"] / first["decompress_images_per_s"]
    return out


def per_group(bundles: list[str], images: np.ndarray) -> dict[str, dict]:
    """For each bundle with pixel groups: its tile and, per group, the share of the pixels and their
    bits per pixel under the decoder alone and with the context net (one posterior sample, seed 0)."""
    from edgevae.runtime import contract

    out = {}
    for name in bundles:
        model = ev.load(shipped_bundles().get(name, name), threads=1)
        if model.pixel_groups == 1:
            continue
        mean, logvar = model.encode(images)
        noise = np.random.default_rng(0).standard_normal(mean.shape).astype(np.float32)
        z = mean + np.exp(0.5 * logvar) * noise
        ids = np.array(contract.pixel_group_map(model.pixel_groups, *model.image_shape[1:], model.pixel_tile))
        pixels = np.array([(ids == g).sum() for g in range(model.pixel_groups)]) * len(images) * model.image_shape[0]
        bits = {key: (-model.group_log_likelihoods(images, z, context=key == "context").sum(0) / np.log(2) / pixels)
                for key in ("alone", "context")}
        out[name] = {"tile": contract.tile_text(model.pixel_tile), "images": len(images),
                     "share": (pixels / pixels.sum()).tolist(), "alone": bits["alone"].tolist(),
                     "context": bits["context"].tolist()}
        print(f"{name}: per group {np.round(bits['alone'] - bits['context'], 4).tolist()} bits/pixel saved", flush=True)
    return out


def group_table(groups: dict[str, dict]) -> str:
    if not groups:
        return ""
    lines = ["", f"Per pixel group, first {next(iter(groups.values()))['images']:,} test images, one posterior "
                 "sample each (seed 0): bits per pixel of the group under the decoder alone and with the context net.",
             "", "| bundle (tile) | group | share of the pixels | decoder alone | with context | saved | bits/dim saved |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in groups.items():
        for g, (share, alone, ctx) in enumerate(zip(e["share"], e["alone"], e["context"])):
            lines.append(f"| `{name}` ({e['tile']}) | {g} | {share:.3f} | {alone:.3f} | {ctx:.3f} | {alone - ctx:.3f} | "
                         f"{share * (alone - ctx):.4f} |")
    return "\n".join(lines) + "\n"


def table(results: dict[str, dict], count: int, rounds: int) -> str:
    lines = [f"Lossless, one container of the first {count:,} Fashion-MNIST test images; speed: median of {rounds} "
             "alternating rounds, ratio to the first bundle (same run).", "",
             "| bundle | pixel groups | gross bits/dim | exact | compress images/s | decompress images/s | "
             "speed ratio (c / d) | bundle MB |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for name, e in results.items():
        lines.append(f"| `{name}` | {e['pixel_groups']} | {e['gross_bits_per_dim']:.4f} | {'yes' if e['exact'] else 'NO'} | "
                     f"{e['compress_images_per_s']:,.0f} | {e['decompress_images_per_s']:,.0f} | "
                     f"{e['compress_ratio']:.2f}x / {e['decompress_ratio']:.2f}x | {e['bundle_mb']:.2f} |")
    best = min(results.values(), key=lambda e: e["gross_bits_per_dim"])
    lines += ["", f"Bars (issue 22): gross <= {BAR_BITS_PER_DIM} bits/dim: best {best['gross_bits_per_dim']:.4f} "
                  f"({'met' if best['gross_bits_per_dim'] <= BAR_BITS_PER_DIM else 'not met'}); decode speed >= "
                  f"{BAR_SPEED_RATIO}x today's: see the ratio column."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", default=",".join(DEFAULT_BUNDLES),
                        help="comma-separated bundle names or folders; the first is the speed reference")
    parser.add_argument("--limit", type=int, default=10_000, help="test images (default: all 10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (default 3)")
    parser.add_argument("--data", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--groups-images", type=int, default=1000,
                        help="test images for the per-group table (default 1,000; 0: no table)")
    parser.add_argument("--groups-only", action="store_true", help="only the per-group table")
    outdir.add_options(parser, "stronger")
    args = parser.parse_args()
    folder = outdir.folder(args, "stronger")
    from edgevae.training.data import load_fashion_mnist

    images = load_fashion_mnist(args.data).test[: args.limit]
    bundles = [b for b in args.bundles.split(",") if b]
    groups = per_group(bundles, images[: args.groups_images]) if args.groups_images else {}
    if args.groups_only:
        print(group_table(groups))
        return
    results = measure(bundles, images, args.rounds)
    record = {"images": len(images), "rounds": args.rounds, "bundles": results, "groups": groups,
              "command": "python benchmarks/stronger.py " + " ".join(
                  f"--{k} {v}" for k, v in (("bundles", args.bundles), ("limit", args.limit), ("rounds", args.rounds),
                                            ("groups-images", args.groups_images))),
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "onnxruntime": metadata.version("onnxruntime"), "numpy": metadata.version("numpy")}}
    (folder / "stronger.json").write_text(json.dumps(record, indent=1) + "\n")
    text = table(results, len(images), args.rounds) + group_table(groups)
    (folder / "stronger.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
