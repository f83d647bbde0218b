"""Rate-distortion and speed of edgevae's lossy codec against JPEG and WebP on Fashion-MNIST.

    python benchmarks/rd.py --update                 # shipped bundle, full test set: benchmarks/results/
    python benchmarks/rd.py --model BUNDLE --limit 1000 --out /tmp/rd   # a quick look

Needs the Fashion-MNIST test set (Debian's ``dataset-fashion-mnist``, or ``--data DIR``) and
matplotlib. Writes ``rd.json`` (every number), ``rd.md`` (the tables) and ``rd.png`` (the plot)
into ``--out`` (default runs/bench/rd/; ``--update``: benchmarks/results/), and prints the tables.

What is measured:

- per-image files, as a user would store them: edgevae's single-image ``.evz`` at every quality
  level (``Codec.compress_each``), JPEG (Pillow, ``optimize=True``) and WebP (Pillow) at a sweep of
  qualities, each image its own complete file with its headers. Mean bytes per image, bits per
  pixel, mean PSNR over images (uint8 pixels, 10 log10(255^2 / MSE)) and mean SSIM (Wang et al.
  2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, mean over the valid region). The
  edgevae pixels are those of the 10,000-image container, whose payloads are checked to be
  byte-identical to the single-image files' (so they decode to the same pixels).
- mosaic: all images tiled into one 2800x2800 picture saved as one JPEG / one WebP (headers
  amortized, PSNR and SSIM per tile) against one ``.evz`` holding all images.
- equal-PSNR comparison: for each edgevae level, the bytes the classical codec needs for the same
  mean PSNR, interpolated linearly in PSNR along its curve (made monotone: for each PSNR the
  smallest mean size reaching at least it). Where edgevae's PSNR is below the lowest the
  classical codec reaches, the comparison uses the classical codec's smallest mean file and
  says so (``below_range``).
- speed (``--threads``, default 2): ``Codec.compress`` and ``Codec.decompress`` of all images in
  one call (best of ``--repeats``), and the whole-process wall time of ``edgevae compress
  one.png -o one.evz`` and ``edgevae decompress one.evz -o one.png`` (median of 5 runs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

import edgevae.runtime as ev
from edgevae.runtime import container as fmt
from edgevae.runtime.images import psnr
from mosaic import bytes_at_psnr, tile, untile  # benchmarks/mosaic.py, shared with the other RD scripts

import outdir


#: Pillow quality settings swept; dense at the low end, where edgevae's files sit.
JPEG_QUALITIES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100)
MOSAIC_JPEG = (1, 5, 10, 20, 50, 90)
MOSAIC_WEBP = (0, 5, 10, 20, 50, 90)

#: Bars of issue 3: edgevae's bytes at equal PSNR at most this fraction of the classical codec's.
BARS = {"WebP": 1 / 5, "JPEG": 1 / 10}


# -- metrics -----------------------------------------------------------------------------------


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of (N, H, W) with the 1-D kernel ``g`` along H then W."""
    from numpy.lib.stride_tricks import sliding_window_view

    rows = sliding_window_view(x, len(g), axis=1) @ g
    return sliding_window_view(rows, len(g), axis=2) @ g


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean SSIM of each gray uint8 image pair (N, 1, H, W) (Wang et al. 2004, Gaussian window)."""
    x = a[:, 0].astype(np.float64)
    y = b[:, 0].astype(np.float64)
    g = _gaussian()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mx * mx
    syy = _filter(y * y, g) - my * my
    sxy = _filter(x * y, g) - mx * my
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.reshape(len(a), -1).mean(1)


def point(name: str, setting: Any, sizes: np.ndarray | float, original: np.ndarray, decoded: np.ndarray,
          pixels_per_image: int) -> dict[str, Any]:
    """One row of a curve: mean bytes per image, bits per pixel, mean PSNR and SSIM."""
    mean_bytes = float(np.mean(sizes))
    return {"codec": name, "setting": setting, "bytes_per_image": mean_bytes,
            "bits_per_pixel": 8 * mean_bytes / pixels_per_image,
            "psnr_db": float(psnr(original, decoded).mean()), "ssim": float(ssim(original, decoded).mean())}


# -- classical codecs --------------------------------------------------------------------------


def pillow_round_trip(image: np.ndarray, fmt_name: str, quality: int) -> tuple[int, np.ndarray]:
    """Save one (H, W) uint8 picture with Pillow and read it back: (bytes, pixels)."""
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": quality}
    if fmt_name == "JPEG":
        options["optimize"] = True
    Image.fromarray(image, mode="L").save(buffer, format=fmt_name, **options)
    data = buffer.getvalue()
    return len(data), np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def classical_curve(images: np.ndarray, fmt_name: str, qualities: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per-image files at each quality."""
    rows = []
    for q in qualities:
        sizes = np.empty(len(images))
        decoded = np.empty_like(images)
        for i, image in enumerate(images):
            sizes[i], decoded[i, 0] = pillow_round_trip(image[0], fmt_name, q)
        rows.append(point(fmt_name if fmt_name == "JPEG" else "WebP", q, sizes, images, decoded, images[0].size))
    return rows


def mosaic_curve(images: np.ndarray, fmt_name: str, qualities: tuple[int, ...]) -> list[dict[str, Any]]:
    """All images in one picture, one file per quality; sizes are per image (file size / N)."""
    canvas, cols = tile(images)
    n, _, h, w = images.shape
    rows = []
    for q in qualities:
        size, decoded = pillow_round_trip(canvas, fmt_name, q)
        rows.append(point(f"{'JPEG' if fmt_name == 'JPEG' else 'WebP'} mosaic", q, size / n, images,
                          untile(decoded, n, cols, h, w), images[0].size))
    return rows


# -- edgevae -----------------------------------------------------------------------------------


def edgevae_curves(codec: Any, images: np.ndarray) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-image files and one-container ('mosaic') rows for every quality level."""
    per_image, mosaic = [], []
    for quality in codec.lossy_qualities:  # the high-quality levels are near-lossless files (quality_range.py)
        singles = codec.compress_each(images, quality)
        together = codec.compress(images, quality)
        parsed = fmt.parse(together)
        if any(fmt.parse(s).payload(0) != parsed.payload(i) for i, s in enumerate(singles)):
            raise SystemExit("single-image payloads differ from the multi-image container's")
        decoded = codec.decompress(together)
        sizes = np.array([len(s) for s in singles])
        row = point("edgevae", quality, sizes, images, decoded, images[0].size)
        row["payload_bytes_per_image"] = float(np.mean([len(fmt.parse(s).payload(0)) for s in singles]))
        per_image.append(row)
        mosaic.append(point("edgevae container", quality, len(together) / len(images), images, decoded,
                            images[0].size))
    return per_image, mosaic


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def speed(codec: Any, images: np.ndarray, repeats: int, model_path: str, threads: int) -> dict[str, Any]:
    """API throughput and whole-process wall time of the CLI on one image."""
    data = codec.compress(images)
    t_compress = best_time(lambda: codec.compress(images), repeats)
    t_decompress = best_time(lambda: codec.decompress(data), repeats)
    mean, _ = codec.model.encode(images)
    table = codec.tables.default
    from edgevae.runtime.rangecode import decode_payloads, encode_payloads

    t_encoder = best_time(lambda: codec.model.encode(images), repeats)
    t_entropy_enc = best_time(lambda: encode_payloads(table, mean), repeats)
    payloads = [fmt.parse(data).payload(i) for i in range(len(images))]
    latents = decode_payloads(table, payloads)
    t_entropy_dec = best_time(lambda: decode_payloads(table, payloads), repeats)
    t_decoder = best_time(lambda: codec.model.decode(latents), repeats)
    n = len(images)
    out: dict[str, Any] = {
        "images": n, "threads": threads, "quality": table.name,
        "compress_images_per_s": n / t_compress, "decompress_images_per_s": n / t_decompress,
        "parts_images_per_s": {"encoder.onnx": n / t_encoder, "quantize+range-code": n / t_entropy_enc,
                               "range-decode+dequantize": n / t_entropy_dec, "decoder.onnx": n / t_decoder},
    }
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "one.png"
        Image.fromarray(images[0, 0], mode="L").save(png)
        env = {**os.environ, "EDGEVAE_MODEL": model_path}
        # The console script of the Python running this benchmark (its venv need not be activated).
        script = Path(sys.executable).with_name("edgevae")
        edgevae = [str(script)] if script.exists() else [sys.executable, "-m", "edgevae.runtime"]
        commands = {
            "compress": [*edgevae, "compress", str(png), "-o", str(Path(tmp) / "one.evz"), "--force",
                         "--threads", str(threads)],
            "decompress": [*edgevae, "decompress", str(Path(tmp) / "one.evz"), "-o", str(Path(tmp) / "back.png"),
                           "--force", "--threads", str(threads)],
        }
        walls: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(5):
            for name, argv in commands.items():
                start = time.perf_counter()
                subprocess.run(argv, check=True, env=env, capture_output=True)
                walls[name].append(time.perf_counter() - start)
    out["cli_wall_seconds_median"] = {f"edgevae {name} one.png": float(np.median(v)) for name, v in walls.items()}
    return out


# -- report ------------------------------------------------------------------------------------


def compare(edgevae: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """For each edgevae level and classical codec: bytes at equal PSNR and the ratio."""
    rows = []
    for e in edgevae:
        for name, curve in curves.items():
            other, how = bytes_at_psnr(curve, e["psnr_db"])
            ratio = e["bytes_per_image"] / other if other == other else float("nan")
            rows.append({"quality": e["setting"], "codec": name, "edgevae_bytes": e["bytes_per_image"],
                         "edgevae_psnr_db": e["psnr_db"], "classical_bytes": other, "how": how,
                         "ratio": ratio, "bar": BARS.get(name),
                         "meets_bar": bool(ratio <= BARS[name]) if name in BARS else None})
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The tables of rd.md."""
    lines = [f"Made by `{result['command']}` in {result['seconds']} s.", "",
             f"Fashion-MNIST test set, {result['images']} images of {result['image_shape']}; model "
             f"`{result['model_name']}` (`{result['model']}`); {result['machine']}.", "",
             "**Per-image files** (each image its own file, headers included)", "",
             "| codec | setting | bytes/image | bits/pixel | PSNR (dB) | SSIM |", "|---|---|---|---|---|---|"]
    for r in result["edgevae"] + result["jpeg"] + result["webp"]:
        lines.append(f"| {r['codec']} | {r['setting']} | {r['bytes_per_image']:.1f} | {r['bits_per_pixel']:.3f} | "
                     f"{r['psnr_db']:.2f} | {r['ssim']:.3f} |")
    lines += ["", "**edgevae against the classical codecs at equal PSNR** (per-image files)", "",
              "| edgevae quality | PSNR (dB) | edgevae bytes | codec | its bytes at that PSNR | ratio | bar | met |",
              "|---|---|---|---|---|---|---|---|"]
    for c in result["equal_psnr"]:
        note = " (its smallest file: edgevae is below its PSNR range)" if c["how"] == "below_range" else ""
        lines.append(f"| {c['quality']} | {c['edgevae_psnr_db']:.2f} | {c['edgevae_bytes']:.1f} | {c['codec']} | "
                     f"{c['classical_bytes']:.1f}{note} | {c['ratio']:.3f} (1/{1 / c['ratio']:.1f}) | "
                     f"<= 1/{1 / c['bar']:.0f} | {'yes' if c['meets_bar'] else 'no'} |")
    lines += ["", "**Mosaic**: all images in one file (one .evz; one 2800x2800 JPEG / WebP)", "",
              "| codec | setting | bytes/image | bits/pixel | PSNR (dB) | SSIM |", "|---|---|---|---|---|---|"]
    for r in result["mosaic"]:
        lines.append(f"| {r['codec']} | {r['setting']} | {r['bytes_per_image']:.2f} | {r['bits_per_pixel']:.3f} | "
                     f"{r['psnr_db']:.2f} | {r['ssim']:.3f} |")
    lines += ["", "| edgevae quality | PSNR (dB) | one .evz bytes/image | mosaic codec | its bytes/image at that PSNR | ratio |",
              "|---|---|---|---|---|---|"]
    for c in result["mosaic_equal_psnr"]:
        note = " (smallest; below its range)" if c["how"] == "below_range" else ""
        lines.append(f"| {c['quality']} | {c['edgevae_psnr_db']:.2f} | {c['edgevae_bytes']:.2f} | {c['codec']} | "
                     f"{c['classical_bytes']:.2f}{note} | {c['ratio']:.3f} |")
    s = result["speed"]
    parts = ", ".join(f"{k} {v:,.0f}/s" for k, v in s["parts_images_per_s"].items())
    walls = ", ".join(f"`{k}` {v:.2f} s" for k, v in s["cli_wall_seconds_median"].items())
    lines += ["", f"**Speed** ({s['threads']} threads, {s['images']} images, quality {s['quality']}): "
              f"`Codec.compress` {s['compress_images_per_s']:,.0f} images/s, `Codec.decompress` "
              f"{s['decompress_images_per_s']:,.0f} images/s (parts: {parts}). Whole process: {walls} (median of 5)."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """RD plot: mean PSNR against mean bytes per image (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"JPEG": ("tab:orange", "o-"), "WebP": ("tab:green", "s-"), "edgevae": ("tab:blue", "D-")}
    for key, rows in (("jpeg", result["jpeg"]), ("webp", result["webp"]), ("edgevae", result["edgevae"])):
        name = rows[0]["codec"]
        color, style = styles[name]
        ax.plot([r["bytes_per_image"] for r in rows], [r["psnr_db"] for r in rows], style, color=color, ms=4,
                label=f"{name}, one file per image")
    for name, color in (("JPEG mosaic", "tab:orange"), ("WebP mosaic", "tab:green"), ("edgevae container", "tab:blue")):
        rows = [r for r in result["mosaic"] if r["codec"] == name]
        ax.plot([r["bytes_per_image"] for r in rows], [r["psnr_db"] for r in rows], "x--", color=color, ms=5,
                label=f"{name} (all {result['images']} images in one file)")
    for i, r in enumerate(result["edgevae"]):
        ax.annotate(r["setting"], (r["bytes_per_image"], r["psnr_db"]), textcoords="offset points",
                    xytext=(-12, 8 if i % 2 else -13), fontsize=7, color="tab:blue")
    ax.set_xscale("log")
    # The region where the codecs meet; the classical curves go on to ~50 dB off the top.
    low = min(r["psnr_db"] for r in result["edgevae"] + result["jpeg"] + result["mosaic"])
    ax.set_ylim(low - 1, 36)
    ax.set_xlabel("mean bytes per image (log scale)")
    ax.set_ylabel("mean PSNR (dB)")
    ax.set_title(f"Fashion-MNIST test set ({result['images']} images, 28x28 gray): rate-distortion")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Bundle folder or shipped bundle name (default: $EDGEVAE_MODEL, "
                                                      "else fashion-mnist-codec, what 'edgevae compress' uses).")
    parser.add_argument("--data", default=None, help="Folder with the Fashion-MNIST IDX files.")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N test images.")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the speed figures.")
    parser.add_argument("--repeats", type=int, default=3, help="Speed: best of this many runs.")
    outdir.add_options(parser, "rd")
    args = parser.parse_args()
    out = outdir.folder(args, "rd")  # before the work: a bad --out fails at once

    from edgevae.runtime.bundle import MODEL_ENV, default_codec_bundle_path, resolve_path
    from edgevae.training.data import load_fashion_mnist

    images = load_fashion_mnist(args.data).test[: args.limit]
    model_path = str(resolve_path(args.model or os.environ.get(MODEL_ENV) or default_codec_bundle_path()).resolve())
    codec = ev.Codec(ev.load(model_path, threads=args.threads))
    started = time.perf_counter()
    per_image, container_rows = edgevae_curves(codec, images)
    jpeg = classical_curve(images, "JPEG", JPEG_QUALITIES)
    webp = classical_curve(images, "WEBP", WEBP_QUALITIES)
    mosaic = container_rows + mosaic_curve(images, "JPEG", MOSAIC_JPEG) + mosaic_curve(images, "WEBP", MOSAIC_WEBP)
    result: dict[str, Any] = {
        "command": "python benchmarks/rd.py " + " ".join(sys.argv[1:]),
        "model": model_path, "model_name": codec.model.bundle.name,
        "images": len(images), "image_shape": list(images.shape[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "edgevae": per_image, "jpeg": jpeg, "webp": webp, "mosaic": mosaic,
        "equal_psnr": compare(per_image, {"WebP": webp, "JPEG": jpeg}),
        "mosaic_equal_psnr": compare(container_rows, {
            "WebP mosaic": [r for r in mosaic if r["codec"] == "WebP mosaic"],
            "JPEG mosaic": [r for r in mosaic if r["codec"] == "JPEG mosaic"]}),
    }
    result["speed"] = speed(codec, images, args.repeats, model_path, args.threads)
    result["seconds"] = round(time.perf_counter() - started, 1)
    (out / "rd.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "rd.md").write_text(text)
    plot(result, out / "rd.png")
    print(text)
    print(f"wrote {out / 'rd.json'}, {out / 'rd.md'}, {out / 'rd.png'} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
