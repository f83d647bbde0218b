"""onnxruntime-web (WebAssembly, in headless Chromium) against Python, at every quality of every
shipped bundle with codec tables, on the 300 images of tests/test_web.py (256 Fashion-MNIST test
images and 44 out-of-domain ones). Prints one line per bundle and quality: how many pixels differ
when the page decodes Python's container, and whether the page's own container is byte-identical.

    make web-deps && python benchmarks/web_parity.py        (about 3 minutes on 2 cores)

The CI test (tests/test_web.py) checks the default quality of each bundle against bounds; this
script gives the full table. Node (onnxruntime-node) needs no table: it is exact (tested).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_web import CODEC_BUNDLES, REAL_IMAGES, chromium_bin, out_of_domain_images  # noqa: E402

from edgevae.runtime import load  # noqa: E402
from edgevae.runtime.bundle import shipped_bundles  # noqa: E402
from edgevae.runtime.codec import Codec  # noqa: E402
from edgevae.training.data import load_fashion_mnist  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="web-parity-"))
    test = load_fashion_mnist().test
    images = np.concatenate([test[:: len(test) // REAL_IMAGES][:REAL_IMAGES], out_of_domain_images()])
    images.tofile(work / "images.raw")
    bulk, expected = [], []
    for name in CODEC_BUNDLES:
        codec = Codec(load(shipped_bundles()[name], threads=1))
        for quality in range(len(codec.lossy_qualities)):  # high-quality levels: near-lossless, Python-only for float bundles
            data = codec.compress(images, quality=quality)
            path = work / f"{name}-{quality}.evz"
            path.write_bytes(data)
            bulk.append({"bundle": name, "container": str(path), "images": str(work / "images.raw"), "quality": quality})
            expected.append((name, quality, data, codec.decompress(data)))
    spec = {"chromium": chromium_bin(), "image": str(ROOT / "examples" / "sneaker.png"),
            "container": bulk[0]["container"], "bulk": bulk}
    (work / "spec.json").write_text(json.dumps(spec))
    subprocess.run(["node", str(ROOT / "web" / "test" / "page.mjs"), str(work / "spec.json"), str(work / "result.json")],
                   check=True)
    result = json.loads((work / "result.json").read_text())
    total = differing = identical = 0
    print(f"onnxruntime-web (WASM) vs onnxruntime CPU, {len(images)} images per line")
    print("| bundle | quality | pixels that differ | largest difference | page's container |")
    print("|---|---:|---:|---:|---|")
    for got, (name, quality, data, pixels) in zip(result["bulk"], expected):
        page = np.array(got["pixels"], np.uint8)
        diff = np.abs(page.astype(int) - pixels.ravel().astype(int))
        same = bytes(got["container"]) == data
        print(f"| {name} | {quality} | {int((diff > 0).sum())} of {page.size} | {diff.max()} | "
              f"{'identical' if same else 'differs'} |")
        total, differing, identical = total + page.size, differing + int((diff > 0).sum()), identical + same
    print(f"total: {differing} of {total} pixels differ; {identical} of {len(expected)} containers identical")


if __name__ == "__main__":
    main()
