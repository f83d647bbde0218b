"""Near-lossless coding: bytes per image, PSNR, maximum error and speed at K = 1..32, one thread.

    python benchmarks/nearlossless.py [--limit 1000] [--model fashion-mnist] [--update]

On the first ``--limit`` Fashion-MNIST test images: one multi-image container (bits-back) and
one single-image container per image (the first 200), for each K; the lossy codec's
high-quality levels the same way. Prints a table; writes the results as JSON to
/tmp/edgevae-nearlossless.json, or to benchmarks/results/nearlossless.json with --update.
The JPEG-LS near=K reference (imagecodecs, same images) is the issue's: 435/357/288/234/196
bytes per image at K = 1/2/4/8/16.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

#: JPEG-LS near=K bytes per image on the Fashion-MNIST test set (issue 19, imagecodecs).
JPEG_LS = {1: 435, 2: 357, 4: 288, 8: 234, 16: 196}
KS = (1, 2, 4, 8, 16, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="test images (from the first)")
    parser.add_argument("--singles", type=int, default=200, help="images coded one per file")
    parser.add_argument("--model", default=None, help="bundle (default: near-lossless's default)")
    parser.add_argument("--update", action="store_true", help="write benchmarks/results/nearlossless.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import edgevae.runtime as ev
    from edgevae.runtime.images import psnr
    from edgevae.training.data import load_fashion_mnist

    images = load_fashion_mnist().test[: args.limit]
    singles = images[: args.singles]
    rows = []

    def measure(label: str, k: int, compress, compress_each, decompress) -> None:
        t0 = time.perf_counter()
        data = compress(images)
        t1 = time.perf_counter()
        back = decompress(data)
        t2 = time.perf_counter()
        files = compress_each(singles)
        back_single = np.concatenate([decompress(f) for f in files])
        error = max(int(np.abs(back.astype(int) - images).max()), int(np.abs(back_single.astype(int) - singles).max()))
        row = {"level": label, "max_error": k, "multi_bytes": len(data) / len(images),
               "single_bytes": float(np.mean([len(f) for f in files])), "psnr_db": float(psnr(images, back).mean()),
               "max_error_seen": error, "violations": int((np.abs(back.astype(int) - images) > k).sum()),
               "encode_images_per_s": len(images) / (t1 - t0), "decode_images_per_s": len(images) / (t2 - t1)}
        rows.append(row)
        ref = JPEG_LS.get(k)
        ratio = f"{row['multi_bytes'] / ref:.2f} / {row['single_bytes'] / ref:.2f}" if ref else "-"
        print(f"{label:>10} {k:>3} {row['multi_bytes']:8.1f} {row['single_bytes']:8.1f} {ratio:>12} "
              f"{row['psnr_db']:7.2f} {error:>5} {row['encode_images_per_s']:7.0f} {row['decode_images_per_s']:7.0f}",
              flush=True)

    print(f"{len(images)} images (singles: {len(singles)}), load {os.getloadavg()[0]:.2f}")
    print(f"{'level':>10} {'K':>3} {'multi B':>8} {'single B':>8} {'x JPEG-LS':>12} {'PSNR':>7} {'max':>5} "
          f"{'enc/s':>7} {'dec/s':>7}")
    for k in KS:
        codec = ev.open_codec("near-lossless", model=args.model, threads=1, max_error=k)
        measure("max-error", k, codec.compress, codec.compress_each, codec.decompress)
    lossy = ev.open_codec("lossy", threads=1)
    for level in lossy.high_levels:
        measure(level.name, level.max_error, lambda x, q=level.name: lossy.compress(x, quality=q),
                lambda x, q=level.name: lossy.compress_each(x, quality=q), lossy.decompress)
    out = Path(__file__).parent / "results" / "nearlossless.json" if args.update else Path("/tmp/edgevae-nearlossless.json")
    out.write_text(json.dumps({"images": len(images), "singles": len(singles), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
