"""Exact decoding everywhere (issue 21): integer bundles in Python, Node, headless Chromium (WASM)
and a C program, on the parity set of tests/test_web.py (256 Fashion-MNIST test images and 44
out-of-domain ones), then lossless rate and speed on the full test set.

    make web-deps && python benchmarks/exact_parity.py [--speed-images 10000] [--no-browser]

Prints (and writes as JSON to runs/bench/exact_parity/, or benchmarks/results/ with --update):

1. tables: a C program written from docs/FORMAT.md alone (benchmarks/exactref) against
   runtime/exact.py: every table's CRC and the fingerprint at every bucket precision, and the
   per-symbol tables built from the integer networks' outputs on the parity set;
2. networks: onnxruntime's integers against the numpy int64 reference (training/integer.py),
   for the encoder on the parity images and the decoder at their posterior modes;
3. containers: for every integer bundle, lossless (one file, single files), near-lossless
   K = 1 / 4 / 32 (one file, single files) and, with codec tables, every lossy quality: Python
   writes them; Node (onnxruntime-node) and the page in Chromium (onnxruntime-web, WASM) decode
   them (pixels that differ) and write their own (byte-identical or not);
4. rate and speed: lossless gross bits/dim and images/s (wall and per CPU second) of the float
   default bundle and the integer one in Python, and of the integer one in Node.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import exacttables  # noqa: E402
import outdir  # noqa: E402
from test_web import REAL_IMAGES, chromium_bin, node_bin, out_of_domain_images  # noqa: E402

import edgevae.runtime as ev  # noqa: E402
from edgevae.runtime import exact  # noqa: E402
from edgevae.runtime.bundle import read_manifest, shipped_bundles  # noqa: E402
from edgevae.training.data import load_fashion_mnist  # noqa: E402
from edgevae.training.integer import load_network, reference_decode, reference_encode  # noqa: E402

BUCKET_BITS = 16
MAX_ERRORS = (1, 4, 32)
SINGLE_FILES = 4  # images coded one per file (lossless and near-lossless)


def integer_bundles() -> dict[str, Path]:
    """The shipped bundles whose graphs compute with integers."""
    return {name: path for name, path in shipped_bundles().items() if read_manifest(path).arithmetic == "integer"}


def parity_images() -> np.ndarray:
    test = load_fashion_mnist().test
    return np.concatenate([test[:: len(test) // REAL_IMAGES][:REAL_IMAGES], out_of_domain_images()]).astype(np.uint8)


def network_outputs(model: ev.EdgeVAE, images: np.ndarray) -> exacttables.Outputs:
    """The integer networks' outputs on ``images``: the posterior, and the decoder at the bucket of
    each posterior mean (the latent a chain's first image would not use, but a real bucket centre)."""
    mean, logvar = model.encode_indices(images)
    edges, centres, _ = exact.buckets(BUCKET_BITS)
    mode = np.searchsorted(edges, mean.astype(np.int64) << 10, side="right")
    mix = model.likelihood_indices(centres[mode])
    n = len(images)
    flat = lambda a: a.reshape(n, a.shape[1], -1)  # noqa: E731
    return exacttables.Outputs(mean, logvar, flat(mix.logit_index), flat(mix.mean_index), flat(mix.log_scale_index),
                               images.reshape(n, -1))


def check_tables(models: dict[str, ev.EdgeVAE], images: np.ndarray, work: Path) -> list[dict]:
    binary = exacttables.build(work)
    rows = []
    for bits in range(6, 17):
        c, py = exacttables.run(binary, bits), exacttables.python_crcs(bits)
        rows.append({"what": f"every table, b = {bits}", "same": all(c[k] == py[k] for k in py),
                     "fingerprint": py["fingerprint"]})
    for name, model in models.items():
        outputs = network_outputs(model, images)
        c = exacttables.run(binary, BUCKET_BITS, outputs, work)["symbol tables crc"]
        rows.append({"what": f"per-symbol tables of {name} on {len(images)} images", "same":
                     c == exacttables.symbol_tables_crc(BUCKET_BITS, outputs), "fingerprint": None})
    return rows


def check_networks(name: str, model: ev.EdgeVAE, images: np.ndarray) -> dict:
    network = load_network(shipped_bundles()[name])
    mean, logvar = model.encode_indices(images)
    ref_mean, ref_logvar = reference_encode(network, images)
    edges, centres, _ = exact.buckets(BUCKET_BITS)
    latents = centres[np.searchsorted(edges, mean.astype(np.int64) << 10, side="right")]
    mix = model.likelihood_indices(latents)
    ref = reference_decode(network, latents)
    pixels = model.decode_indices(latents)
    differ = int((mean != ref_mean).sum() + (logvar != ref_logvar).sum())
    differ += sum(int((getattr(mix, f) != ref[k]).sum()) for f, k in (
        ("logit_index", "mixture_logit_index"), ("mean_index", "mixture_mean_index"),
        ("log_scale_index", "mixture_log_scale_index")))
    differ += int((pixels != ref["pixels"]).sum())
    values = mean.size * 2 + mix.logit_index.size * 3 + pixels.size
    return {"bundle": name, "values": values, "differ": differ}


def container_jobs(name: str, model: ev.EdgeVAE, images: np.ndarray, work: Path) -> list[dict]:
    """Python's containers of every mode, with what they decode to."""
    jobs = []

    def add(label: str, data: bytes, batch: np.ndarray, **options) -> None:
        stem = work / f"{name}-{label}"
        stem.with_suffix(".evz").write_bytes(data)
        np.save(stem.with_suffix(".npy"), batch)
        decoded = ev.codec_for_container(data, model=shipped_bundles()[name]).decompress(data)
        jobs.append({"bundle": name, "label": label, "container": str(stem.with_suffix(".evz")),
                     "images": str(stem.with_suffix(".npy")), "raw": str(stem.with_suffix(".raw")),
                     "bytes": data, "pixels": decoded, **options})
        batch.tofile(stem.with_suffix(".raw"))

    lossless = ev.LosslessCodec(model)
    add("lossless", lossless.compress(images), images, lossless=True)
    for i in range(SINGLE_FILES):
        add(f"lossless-single{i}", lossless.compress(images[i : i + 1]), images[i : i + 1], lossless=True)
    for k in MAX_ERRORS:
        near = ev.NearLosslessCodec(model, max_error=k)
        add(f"k{k}", near.compress(images), images, max_error=k)
        for i in range(SINGLE_FILES):
            add(f"k{k}-single{i}", near.compress(images[i : i + 1]), images[i : i + 1], max_error=k)
    if read_manifest(shipped_bundles()[name]).codec_path is not None:
        codec = ev.Codec(model)
        for q, quality in enumerate(codec.lossy_qualities):
            add(f"lossy-{quality}", codec.compress(images, quality=quality), images, quality=q)
    return jobs


def run_node(jobs: list[dict], work: Path) -> list[dict]:
    """Each job decoded and re-encoded by web/ in Node; returns {differ, identical} per job."""
    node_jobs = []
    for j in jobs:
        bundle = str(shipped_bundles()[j["bundle"]])
        options = {k: j[k] for k in ("lossless", "max_error", "quality") if k in j}
        node_jobs.append({"op": "decode", "bundle": bundle, "container": j["container"], "out": j["container"] + ".node.npy"})
        node_jobs.append({"op": "encode", "bundle": bundle, "images": j["images"], "out": j["container"] + ".node.evz",
                          **options})
    (work / "node-jobs.json").write_text(json.dumps(node_jobs))
    subprocess.run([node_bin(), str(ROOT / "web" / "test" / "parity.mjs"), str(work / "node-jobs.json"),
                    str(work / "node-results.json")], check=True)
    errors = json.loads((work / "node-results.json").read_text())
    out = []
    for i, j in enumerate(jobs):
        decode_error, encode_error = errors[2 * i]["error"], errors[2 * i + 1]["error"]
        pixels = None if decode_error else np.load(j["container"] + ".node.npy")
        made = None if encode_error else Path(j["container"] + ".node.evz").read_bytes()
        out.append(_compare(j, pixels, made, decode_error or encode_error))
    return out


def run_browser(jobs: list[dict], work: Path) -> list[dict]:
    """The same in the page, in headless Chromium (onnxruntime-web's WASM build)."""
    mounts = {f"/bundles/{name}/": str(path) for name, path in integer_bundles().items()}
    exact_jobs = []
    for j in jobs:
        job = {"bundle": f"/bundles/{j['bundle']}/", "container": j["container"], "images": j["raw"]}
        job.update({k: j[k] for k in ("max_error", "quality") if k in j})
        exact_jobs.append(job)
    first = jobs[0]
    spec = {"chromium": chromium_bin(), "image": str(ROOT / "examples" / "sneaker.png"),
            "container": first["container"], "mounts": mounts, "exact": exact_jobs}
    (work / "page-spec.json").write_text(json.dumps(spec))
    subprocess.run([node_bin(), str(ROOT / "web" / "test" / "page.mjs"), str(work / "page-spec.json"),
                    str(work / "page-result.json")], check=True)
    result = json.loads((work / "page-result.json").read_text())
    out = []
    for j, got in zip(jobs, result["exact"]):
        if got.get("error"):
            out.append(_compare(j, None, None, got["error"]))
            continue
        pixels = np.array(got["pixels"], np.uint8)
        out.append(_compare(j, pixels, bytes(got["container"]) if got.get("container") else None, None))
    return out


def _compare(job: dict, pixels: np.ndarray | None, made: bytes | None, error: str | None) -> dict:
    want = job["pixels"].reshape(-1)
    differ = None if pixels is None else int((pixels.reshape(-1) != want).sum())
    return {"pixels": int(want.size), "differ": differ, "identical": made is not None and made == job["bytes"],
            "error": error}


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    wall, cpu = time.perf_counter(), _cpu()
    value = fn()
    return value, time.perf_counter() - wall, _cpu() - cpu


def speed(images: np.ndarray, work: Path) -> list[dict]:
    """Lossless gross rate and speed of the float default bundle and the integer one, Python and Node."""
    rows = []
    float_name = "fashion-mnist"
    for name in [float_name, *integer_bundles()]:
        codec = ev.LosslessCodec(ev.load(shipped_bundles()[name], threads=1))
        codec.compress(images[:64])  # tables and sessions built before timing
        data, w_enc, c_enc = timed(lambda: codec.compress(images))
        back, w_dec, c_dec = timed(lambda: codec.decompress(data))
        assert np.array_equal(back, images), f"{name}: lossless round trip differs"
        rows.append({"engine": "Python", "bundle": name, "bits_per_dim": 8 * len(data) / images.size,
                     "encode_per_s": len(images) / w_enc, "decode_per_s": len(images) / w_dec,
                     "encode_per_cpu_s": len(images) / c_enc, "decode_per_cpu_s": len(images) / c_dec})
        if name == float_name:
            continue
        np.save(work / "speed.npy", images)
        (work / "speed.evz").write_bytes(data)
        bundle = str(shipped_bundles()[name])

        def node(jobs: list[dict]) -> tuple[float, float]:
            (work / "speed-jobs.json").write_text(json.dumps(jobs))
            _, wall, cpu = timed(lambda: subprocess.run(
                [node_bin(), str(ROOT / "web" / "test" / "parity.mjs"), str(work / "speed-jobs.json"),
                 str(work / "speed-results.json")], check=True))
            assert all(r["error"] is None for r in json.loads((work / "speed-results.json").read_text()))
            return wall, cpu

        # a one-image job measures Node's start-up (loading the bundle, building the tables)
        np.save(work / "one.npy", images[:1])
        start_wall, start_cpu = node([{"op": "encode", "bundle": bundle, "images": str(work / "one.npy"),
                                       "out": str(work / "one.evz"), "lossless": True}])
        enc_wall, enc_cpu = node([{"op": "encode", "bundle": bundle, "images": str(work / "speed.npy"),
                                   "out": str(work / "speed.node.evz"), "lossless": True}])
        dec_wall, dec_cpu = node([{"op": "decode", "bundle": bundle, "container": str(work / "speed.evz"),
                                   "out": str(work / "speed.node.npy")}])
        assert (work / "speed.node.evz").read_bytes() == data, "Node's lossless container differs from Python's"
        assert np.array_equal(np.load(work / "speed.node.npy"), images), "Node's lossless decode differs"
        rows.append({"engine": "Node", "bundle": name, "bits_per_dim": 8 * len(data) / images.size,
                     "encode_per_s": len(images) / max(enc_wall - start_wall, 1e-9),
                     "decode_per_s": len(images) / max(dec_wall - start_wall, 1e-9),
                     "encode_per_cpu_s": len(images) / max(enc_cpu - start_cpu, 1e-9),
                     "decode_per_cpu_s": len(images) / max(dec_cpu - start_cpu, 1e-9)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed-images", type=int, default=10000, help="test images for rate and speed (default 10000)")
    parser.add_argument("--no-browser", action="store_true", help="skip headless Chromium")
    outdir.add_options(parser, "exact_parity")
    args = parser.parse_args()
    folder = outdir.folder(args, "exact_parity")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="exact-parity-"))
    images = parity_images()
    models = {name: ev.load(path, threads=1) for name, path in integer_bundles().items()}
    report: dict = {"images": len(images)}

    report["tables"] = check_tables(models, images, work)
    print(f"1. tables: C program (from FORMAT.md) vs runtime/exact.py, parity set of {len(images)} images")
    print("| what | identical |\n|---|---|")
    for row in report["tables"]:
        print(f"| {row['what']} | {'yes' if row['same'] else 'NO'} |")

    report["networks"] = [check_networks(name, model, images) for name, model in models.items()]
    print("\n2. networks: onnxruntime (CPU) vs the numpy int64 reference\n| bundle | integers | differ |\n|---|---:|---:|")
    for row in report["networks"]:
        print(f"| {row['bundle']} | {row['values']:,} | {row['differ']} |")

    jobs = [job for name, model in models.items() for job in container_jobs(name, model, images, work)]
    engines = {"Node": run_node(jobs, work)}
    if not args.no_browser:
        engines["Chromium (WASM)"] = run_browser(jobs, work)
    report["containers"] = []
    print("\n3. containers made by Python: pixels that differ when decoded elsewhere; the other engine's own container")
    print("| bundle | container | bytes | " + " | ".join(f"{e}: differ | {e}: same bytes" for e in engines) + " |")
    print("|---|---|---:|" + "---:|---|" * len(engines))
    for i, j in enumerate(jobs):
        cells = []
        row = {"bundle": j["bundle"], "container": j["label"], "bytes": len(j["bytes"]), "pixels": int(j["pixels"].size)}
        for e, results in engines.items():
            r = results[i]
            row[e] = r
            cells += ["error: " + r["error"] if r["error"] else f"{r['differ']} / {r['pixels']:,}",
                      "yes" if r["identical"] else "NO"]
        report["containers"].append(row)
        print(f"| {j['bundle']} | {j['label']} | {len(j['bytes']):,} | " + " | ".join(cells) + " |")
    for e in engines:
        differ = sum(r[e]["differ"] or 0 for r in report["containers"])
        same = sum(r[e]["identical"] for r in report["containers"])
        errors = sum(r[e]["error"] is not None for r in report["containers"])
        print(f"{e}: {differ} pixels differ in all, {same} of {len(jobs)} containers byte-identical, {errors} errors")

    test = load_fashion_mnist().test[: args.speed_images]
    report["speed"] = speed(test, work)
    print(f"\n4. lossless, {len(test):,} test images in one file (Python: 2 lanes, 1 onnxruntime thread each; "
          "Node: one thread), gross rate")
    print("| engine | bundle | bits/dim | encode img/s | decode img/s | encode img/CPU-s | decode img/CPU-s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in report["speed"]:
        print(f"| {r['engine']} | {r['bundle']} | {r['bits_per_dim']:.4f} | {r['encode_per_s']:.0f} | "
              f"{r['decode_per_s']:.0f} | {r['encode_per_cpu_s']:.0f} | {r['decode_per_cpu_s']:.0f} |")
    (folder / "exact_parity.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwrote {folder / 'exact_parity.json'}")


if __name__ == "__main__":
    main()
