"""Lossless compression of the Fashion-MNIST test set: edgevae bits-back coding against the
classical lossless codecs, all in bits per pixel, plus speed and the initial-bits overhead.

    python benchmarks/lossless.py                         # shipped bundle, 10,000 images, 2 cores
    python benchmarks/lossless.py --model /tmp/bundle --limit 1000 --size-sample 200   # quick look

Needs the Fashion-MNIST test set (``--data``, else $EDGEVAE_DATA, else Debian's
/usr/share/datasets/fashion-mnist, as for training) and the training extras (only for
``edgevae.training.data.load_fashion_mnist``). Writes (to runs/bench/lossless/ or ``--out``;
``--update``: benchmarks/results/) lossless.json
(every number) and lossless.md (the table).

Measured, on the same images:

- lzma (preset 9 | extreme), bz2 (level 9), zlib (level 9) over the raw bytes of the whole set
  (N x 784 bytes, image after image);
- PNG (Pillow, optimize) and lossless WebP (Pillow, method 6): each image its own file with its
  headers, and all images tiled into one square mosaic saved as one file;
- the model's negative ELBO and IWAE bound: from the bundle manifest's evaluation (full test
  set, PyTorch, k samples) and by Monte Carlo through the runtime on exactly these images;
- edgevae lossless (runtime/bitsback.py) of all images in one payload: gross = every byte of
  the lossless .evz container (header, count, payload, CRC); net = the bits each image adds once
  its chain has started (the chains' first images carry the initial bits, see bitsback.py);
  compress and decompress images/s (wall clock, model loaded and tables built beforehand), and
  the exact round trip of every image;
- net and gross for containers of 1, 10, 100 and all images (the smaller sizes on the first
  ``--size-sample`` images, cut into consecutive containers).
"""

from __future__ import annotations

import argparse
import bz2
import io
import json
import lzma
import os
import platform
import sys
import time
import zlib
from importlib import metadata
from typing import Any

import numpy as np
from PIL import Image

import outdir
from mosaic import tile  # benchmarks/mosaic.py, shared with the other RD scripts


#: The issue's bars (issue 5).
BAR_NET_OVER_NELBO = 1.02
BAR_GROSS_BPP = 3.48
BAR_IMAGES_PER_S = 500.0
SIZES = (1, 10, 100, 10_000)


def container_bytes(model: Any, count: int, payload: bytes) -> int:
    """Size of the real lossless .evz container of a payload: header, image count, payload, CRC."""
    from edgevae.runtime import container

    return len(container.pack_lossless(model.bundle.fingerprint, model.image_shape, count, payload))


def classical(images: np.ndarray) -> dict[str, float]:
    """Bits per pixel of each classical codec on ``images`` (N, 1, H, W)."""
    pixels = images.size
    raw = images.tobytes()
    out = {
        "lzma (raw set)": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
        "bz2 (raw set)": len(bz2.compress(raw, 9)),
        "zlib (raw set)": len(zlib.compress(raw, 9)),
    }
    mosaic, _ = tile(images)
    formats = {"PNG": {"format": "PNG", "optimize": True},
               "WebP lossless": {"format": "WEBP", "lossless": True, "quality": 100, "method": 6}}
    for name, options in formats.items():
        out[f"{name} (mosaic)"] = len(_save(mosaic, options))
        out[f"{name} (per image)"] = sum(len(_save(image[0], options)) for image in images)
    return {name: 8 * size / pixels for name, size in out.items()}


def _save(array: np.ndarray, options: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, **options)
    return buffer.getvalue()


def model_bounds(model: Any, images: np.ndarray, samples: int) -> dict[str, float | None]:
    """Negative ELBO and IWAE in bits per pixel: manifest evaluation and Monte Carlo on these images."""
    from edgevae.runtime import likelihood

    evaluation = model.bundle.manifest.get("evaluation") or {}
    nelbo, iwae = [], []
    for start in range(0, len(images), 500):
        a, b = likelihood.negative_elbo(model, images[start : start + 500], samples=samples, seed=start)
        nelbo.append(a)
        iwae.append(b)
    per_image = images[0].size
    return {
        "manifest_nelbo_bpp": evaluation.get("nelbo_bpd"),
        "manifest_iwae_bpp": evaluation.get("iwae_bpd"),
        "manifest_k": evaluation.get("k"),
        "mc_nelbo_bpp": float(np.concatenate(nelbo).mean() / per_image),
        "mc_iwae_bpp": float(np.concatenate(iwae).mean() / per_image),
        "mc_samples": samples,
    }


def lossless(model: Any, images: np.ndarray) -> dict[str, Any]:
    """One payload of all images: rates, speeds and the exact round trip."""
    from edgevae.runtime import bitsback

    bitsback.tables(bitsback.LATENT_BUCKET_BITS)
    bitsback.decode(model, bitsback.encode(model, images[:2]).payload, 2)  # warm up sessions and caches
    started = time.perf_counter()
    encoded = bitsback.encode(model, images)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    decoded = bitsback.decode(model, encoded.payload, len(images))
    decode_s = time.perf_counter() - started
    exact = bool(np.array_equal(decoded, images))
    per_image = images[0].size
    gross_bytes = container_bytes(model, len(images), encoded.payload)
    return {
        "images": len(images),
        "chains": encoded.chains,
        "bucket_bits": bitsback.LATENT_BUCKET_BITS,
        "payload_bytes": len(encoded.payload),
        "container_bytes": gross_bytes,
        "initial_bits": encoded.initial_bits,
        "net_bpp": encoded.net_bits_per_image() / per_image,
        "gross_bpp": 8 * gross_bytes / (len(images) * per_image),
        "compress_images_per_s": len(images) / encode_s,
        "decompress_images_per_s": len(images) / decode_s,
        "exact": exact,
        "mismatched_images": int((decoded != images).reshape(len(images), -1).any(1).sum()),
    }


def by_container_size(model: Any, images: np.ndarray, sizes: list[int], main: dict[str, Any]) -> list[dict[str, Any]]:
    """Net and gross bits per pixel when the images are cut into containers of each size."""
    from edgevae.runtime import bitsback

    rows = []
    per_image = images[0].size
    for size in sizes:
        if size >= main["images"]:
            rows.append({"size": main["images"], "containers": 1, "images": main["images"], "net_bpp": main["net_bpp"],
                         "gross_bpp": main["gross_bpp"], "initial_bits_per_container": main["initial_bits"]})
            continue
        count = len(images) // size * size
        total_bytes = net_bits = net_images = initial = 0
        for start in range(0, count, size):
            encoded = bitsback.encode(model, images[start : start + size])
            total_bytes += container_bytes(model, size, encoded.payload)
            net_bits += encoded.coded_bits - encoded.initial_bits
            net_images += size - encoded.chains
            initial += encoded.initial_bits
        rows.append({
            "size": size, "containers": count // size, "images": count,
            "net_bpp": net_bits / (net_images * per_image) if net_images else None,
            "gross_bpp": 8 * total_bytes / (count * per_image),
            "initial_bits_per_container": initial / (count // size),
        })
    return rows


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render(result: dict[str, Any]) -> str:
    """The Markdown table of a result."""
    m, b = result["lossless"], result["bounds"]
    nelbo = b["manifest_nelbo_bpp"] if b["manifest_nelbo_bpp"] is not None else b["mc_nelbo_bpp"]
    lines = [
        f"Lossless, Fashion-MNIST test set ({m['images']} images), bits per pixel (lower is better).",
        f"Model: {result['model']}; onnxruntime {result['threads']} thread(s) per call, {result['lanes']} lanes in "
        f"parallel; {result['machine']}.",
        "",
        "| method | bits/pixel | vs lzma |",
        "|---|---:|---:|",
    ]
    lzma_bpp = result["classical"]["lzma (raw set)"]
    rows = [("edgevae lossless, net", m["net_bpp"]), ("edgevae lossless, gross (whole container)", m["gross_bpp"])]
    rows += sorted(result["classical"].items(), key=lambda kv: kv[1])
    rows += [("model negative ELBO (manifest)", b["manifest_nelbo_bpp"]),
             ("model IWAE bound (manifest)", b["manifest_iwae_bpp"]),
             (f"model negative ELBO (Monte Carlo, k={b['mc_samples']}, these images)", b["mc_nelbo_bpp"]),
             (f"model IWAE bound (Monte Carlo, k={b['mc_samples']}, these images)", b["mc_iwae_bpp"])]
    for name, bpp in rows:
        lines.append(f"| {name} | {_fmt(bpp)} | {_fmt(bpp / lzma_bpp if bpp is not None else None, 3)} |")
    lines += ["", "| images per container | containers | net bits/pixel | gross bits/pixel | initial bits/container |",
              "|---:|---:|---:|---:|---:|"]
    for row in result["by_size"]:
        lines.append(f"| {row['size']} | {row['containers']} | {_fmt(row['net_bpp'])} | {_fmt(row['gross_bpp'])} | "
                     f"{row['initial_bits_per_container']:.0f} |")
    lines += ["", "Initial bits: the ANS bits of the chains' first images, coded without bits back (gross "
              "includes them, net leaves them out).",
              "", "| speed | images/s |", "|---|---:|",
              f"| compress ({m['chains']} chains) | {m['compress_images_per_s']:.0f} |",
              f"| decompress | {m['decompress_images_per_s']:.0f} |", ""]
    bars = [
        (f"net <= {BAR_NET_OVER_NELBO} x negative ELBO ({_fmt(nelbo)})", m["net_bpp"] <= BAR_NET_OVER_NELBO * nelbo,
         f"{m['net_bpp'] / nelbo:.4f} x"),
        (f"gross <= {BAR_GROSS_BPP} bits/pixel", m["gross_bpp"] <= BAR_GROSS_BPP, _fmt(m["gross_bpp"])),
        ("exact round trip of every image", m["exact"], f"{m['images'] - m['mismatched_images']}/{m['images']}"),
        (f"compress >= {BAR_IMAGES_PER_S:.0f} images/s", m["compress_images_per_s"] >= BAR_IMAGES_PER_S,
         f"{m['compress_images_per_s']:.0f}"),
        (f"decompress >= {BAR_IMAGES_PER_S:.0f} images/s", m["decompress_images_per_s"] >= BAR_IMAGES_PER_S,
         f"{m['decompress_images_per_s']:.0f}"),
    ]
    lines += ["| bar | met | measured |", "|---|---|---:|"]
    lines += [f"| {name} | {'yes' if ok else 'NO'} | {value} |" for name, ok, value in bars]
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="bundle folder (default: the shipped bundle)")
    parser.add_argument("--data", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--limit", type=int, default=10_000, help="test images to use (default: all 10,000)")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads per call (default 1: the coder runs 2 lanes in parallel "
                             "threads, one core each)")
    parser.add_argument("--size-sample", type=int, default=1000,
                        help="images cut into containers of 1, 10 and 100 (default 1000)")
    parser.add_argument("--samples", type=int, default=8, help="Monte Carlo samples per image for the ELBO")
    parser.add_argument("--skip-classical", action="store_true", help="leave out the classical codecs")
    outdir.add_options(parser, "lossless")
    args = parser.parse_args()
    out = outdir.folder(args, "lossless")  # before the work: a bad --out fails at once

    from edgevae.runtime import load
    from edgevae.runtime.bitsback import LANES
    from edgevae.training.data import load_fashion_mnist

    images = load_fashion_mnist(args.data).test[: args.limit]
    model = load(args.model, threads=args.threads)
    result: dict[str, Any] = {
        "command": "python benchmarks/lossless.py " + " ".join(sys.argv[1:]),
        "model": str(model.bundle.path),
        "threads": args.threads,
        "lanes": LANES,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, onnxruntime {metadata.version('onnxruntime')}, "
                   f"numpy {np.__version__}, constriction {metadata.version('constriction')}",
    }
    print(f"edgevae lossless on {len(images)} images ...", flush=True)
    result["lossless"] = lossless(model, images)
    print(json.dumps(result["lossless"], indent=1), flush=True)
    print("containers of 1, 10, 100 images ...", flush=True)
    sizes = [s for s in SIZES if s < len(images)] + [len(images)]
    result["by_size"] = by_container_size(model, images[: args.size_sample], sizes, result["lossless"])
    print("model bounds ...", flush=True)
    result["bounds"] = model_bounds(model, images, args.samples)
    if not args.skip_classical:
        print("classical codecs ...", flush=True)
    result["classical"] = classical(images) if not args.skip_classical else {"lzma (raw set)": float("nan")}
    text = render(result)
    (out / "lossless.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "lossless.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
