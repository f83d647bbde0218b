"""Edge performance of edgevae against PyTorch on the same weights, in one run and one table.

    python benchmarks/speed.py --update        # the shipped bundle, 2 threads, everything: benchmarks/results/
    python benchmarks/speed.py --quick --skip footprint,variants   # a fast look while developing

Needs the training extras (torch, onnx) and the bundle's data set (Fashion-MNIST: Debian's
``dataset-fashion-mnist``); the footprint part also needs PyPI (it builds a runtime-only venv
with ``pip``). Writes speed.json (every number) and speed.md (the table) to runs/bench/speed/ or
``--out`` (``--update``: benchmarks/results/).

What is measured, with the same thread count for both engines (``--threads``):

- speed: the bundle's encoder and decoder through ``edgevae.runtime`` (``EdgeVAE.encode`` /
  ``decode``, onnxruntime) against PyTorch eager running the very modules the exporter traced
  (``EncoderGraph`` / ``DecoderGraph``) at batch 1, 64 and 1024. The engines run in alternating
  blocks of ~0.1 s (after one untimed call that wakes the engine's thread pool), so background
  load hits both alike and each is timed warm; median latency per call, images/s.
- the PyTorch weights are the bundle's: every parameter of ``VAE(model_config)`` is filled from
  the ONNX initializer with the same name (ignoring the exporter's wrapper prefix) and shape,
  and the two engines must then agree within the export parity tolerance (1e-4), or the
  benchmark stops. No run folder or checkpoint is needed, so it runs from a fresh clone.
- FLOPs: counted by walking each ONNX graph (Conv, ConvTranspose, Gemm, MatMul: 2 FLOPs per
  multiply-add; element-wise ops are left out), against this machine's fp32 matmul peak measured
  in the same run (best of torch 2048^3 matmuls at the same thread count).
- cold start: wall time of whole processes, ``edgevae sample -n 1 -o x.png`` against a PyTorch
  script doing the same (import torch, build the VAE, load a state dict, decode one prior
  sample, save the PNG); alternating runs, median; peak RSS of each from ``wait4``.
- footprint: ``pip wheel --no-deps`` of this repo (the wheel carries the shipped bundle), a fresh
  ``venv --without-pip`` with that wheel installed by ``pip --python`` (numpy, onnxruntime,
  click, Pillow from PyPI; no torch), its site-packages size; torch's installed size.
- memory: peak RSS of ``edgevae compress`` over the 10,000 test images (when the codec exists).
- variants: int8 and fp16 bundles made from the benchmarked fp32 bundle by
  :mod:`edgevae.training.precision` (calibrated on training images): graph size, speed against
  fp32 (interleaved), reconstruction PSNR and negative ELBO on the whole test set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

import outdir

ROOT = Path(__file__).resolve().parents[1]

BATCHES = (1, 64, 1024)
#: The issue's bars (issue 4), all checked in the table.
BAR_SPEEDUP = {1: 2.5, 1024: 1.5}
BAR_DECODER_PEAK_FRACTION = 0.5
BAR_COLD_START_S = 0.35
BAR_COLD_START_RATIO = 0.25
BAR_VENV_MB = 150.0
BAR_INT8_PSNR_LOSS_DB = 0.3
#: Images compressed for the peak-RSS measurement.
COMPRESS_IMAGES = 10_000
#: Test images per rate-distortion point of each variant.
RD_IMAGES = 2000
#: Side of the square matmul that measures the fp32 peak.
PEAK_N = 2048
MB = 1e6

SECTIONS = ("speed", "cold", "footprint", "memory", "variants")


@dataclass
class Row:
    """One line of the table."""

    measure: str
    edgevae: str
    reference: str = ""
    ratio: str = ""
    bar: str = ""
    status: str = ""


def status(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


# -- timing ---------------------------------------------------------------------------------


def time_interleaved(fns: dict[str, Callable[[], Any]], min_reps: int, min_seconds: float,
                     max_seconds: float = 60.0, block_seconds: float = 0.1) -> dict[str, list[float]]:
    """Seconds per call of every function, measured in alternating blocks.

    Each round gives every function one block: one untimed call (it wakes that engine's
    thread pool, which sleeps while the other engine runs), then timed calls filling about
    ``block_seconds``. Alternating blocks expose both engines to the same background load
    while timing each in its warm steady state. Runs at least ``min_reps`` timed calls each
    and ``min_seconds`` of wall time (at most ``max_seconds`` once ``min_reps`` is reached).
    """
    per_block = {}
    for name, fn in fns.items():
        fn()
        t = time.perf_counter()
        fn()
        per_block[name] = max(1, int(block_seconds / max(time.perf_counter() - t, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    started = time.perf_counter()
    while True:
        for name, fn in fns.items():
            fn()
            for _ in range(per_block[name]):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
        if min(len(ts) for ts in times.values()) >= min_reps and (elapsed >= min_seconds or elapsed >= max_seconds):
            return times


def matmul_peak(threads: int, quick: bool) -> dict[str, Any]:
    """Best fp32 GFLOP/s of a PEAK_N^3 torch matmul at ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N)
    times = time_interleaved({"mm": lambda: torch.mm(a, b)}, min_reps=5 if quick else 20, min_seconds=1.0)["mm"]
    flops = 2 * PEAK_N**3
    return {"gflops": flops / min(times) / 1e9, "median_gflops": flops / statistics.median(times) / 1e9,
            "n": PEAK_N, "calls": len(times), "engine": f"torch.mm fp32, {threads} threads"}


# -- FLOPs ----------------------------------------------------------------------------------


def graph_flops(path: Path) -> dict[str, Any]:
    """FLOPs per image of an fp32 ONNX graph: 2 per multiply-add of Conv/ConvTranspose/Gemm/MatMul."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes: dict[str, list[int | None]] = {}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    weights = {init.name: list(init.dims) for init in graph.initializer}

    def per_image(shape: list[int | None]) -> int:
        return math.prod(int(d) for d in shape[1:])  # dim 0 is the batch

    by_op: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Conv":
            macs = per_image(shapes[node.output[0]]) * math.prod(weights[node.input[1]][1:])
        elif node.op_type == "ConvTranspose":
            macs = per_image(shapes[node.input[0]]) * math.prod(weights[node.input[1]][1:])
        elif node.op_type == "Gemm":
            macs = math.prod(weights[node.input[1]])  # one row of A per image: K * N, either layout
        elif node.op_type == "MatMul" and node.input[1] in weights:
            macs = per_image(shapes[node.output[0]]) * weights[node.input[1]][0]
        else:
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * macs
    return {"per_image": sum(by_op.values()), "by_op": by_op}


# -- the two engines on the same weights ----------------------------------------------------


def torch_model_from_bundle(bundle: Any) -> Any:
    """``VAE(model_config)`` with every parameter taken from the bundle's ONNX initializers.

    A parameter ``decoder.body.0.weight`` is the initializer of that name or one ending in
    ``.decoder.body.0.weight`` (the exporter's wrappers add ``model.``); exactly one must match,
    with the same shape. Raises SystemExit naming what is missing.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    from edgevae.runtime import contract
    from edgevae.training.model import VAE, ModelConfig

    model = VAE(ModelConfig.from_dict(bundle.manifest["training"]["model_config"])).eval()
    initializers: dict[str, np.ndarray] = {}
    for spec in contract.GRAPHS:
        for init in onnx.load(str(bundle.graph_path(spec))).graph.initializer:
            initializers[init.name] = numpy_helper.to_array(init)
    state = {}
    problems = []
    for name, param in model.state_dict().items():
        matches = [k for k in initializers if k == name or k.endswith("." + name)]
        if len(matches) != 1 or tuple(initializers[matches[0]].shape) != tuple(param.shape):
            problems.append(f"{name} {tuple(param.shape)}: matches {matches}")
            continue
        state[name] = torch.from_numpy(initializers[matches[0]].copy())
    if problems:
        raise SystemExit("cannot rebuild the PyTorch model from the bundle's initializers: " + "; ".join(problems))
    model.load_state_dict(state)
    return model


def check_same_weights(ort_model: Any, torch_encoder: Any, torch_decoder: Any, images: np.ndarray,
                       latents: np.ndarray) -> float:
    """Max abs difference of latents and likelihood outputs between the engines; must be <= 1e-4."""
    import torch

    from edgevae.runtime import contract

    with torch.inference_mode():
        t_mean, t_logvar = torch_encoder(torch.from_numpy(images))
        t_out = torch_decoder(torch.from_numpy(latents))
    o_mean, o_logvar = ort_model.encode(images)
    params = ort_model.likelihood(latents)
    pairs = [(o_mean, t_mean), (o_logvar, t_logvar), (params.logits, t_out[1]), (params.means, t_out[2]),
             (params.log_scales, t_out[3])]
    diff = max(float(np.max(np.abs(a - b.numpy()))) for a, b in pairs)
    if not diff <= contract.PARITY_TOLERANCE:
        raise SystemExit(f"PyTorch and onnxruntime disagree by {diff:.3g} (> {contract.PARITY_TOLERANCE}): "
                         "the rebuilt PyTorch model does not hold the bundle's weights")
    return diff


def measure_speed(bundle: Any, vae: Any, threads: int, batches: tuple[int, ...], images: np.ndarray,
                  quick: bool) -> dict[str, Any]:
    """Images/s and median latency of both engines (``vae``: the PyTorch twin) per graph and batch."""
    import torch

    from edgevae.runtime import load
    from edgevae.training.export import DecoderGraph, EncoderGraph

    torch_encoder, torch_decoder = EncoderGraph(vae).eval(), DecoderGraph(vae).eval()
    ort_model = load(bundle.path, threads=threads)
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((max(batches), bundle.latent_dim), dtype=np.float32)
    parity = check_same_weights(ort_model, torch_encoder, torch_decoder, images[:64], latents[:64])

    def torch_encode(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return [t.numpy() for t in torch_encoder(torch.from_numpy(x))]

    def torch_decode(z: np.ndarray) -> Any:
        with torch.inference_mode():
            return torch_decoder(torch.from_numpy(z))[0].numpy()

    results = []
    for graph in ("encoder", "decoder"):
        for n in batches:
            x = images[:n] if graph == "encoder" else latents[:n]
            if graph == "encoder":
                fns = {"onnxruntime": lambda: ort_model.encode(x), "torch": lambda: torch_encode(x)}
            else:
                fns = {"onnxruntime": lambda: ort_model.decode(x), "torch": lambda: torch_decode(x)}
            work = n * (1 if graph == "encoder" else 4)  # decoder calls cost ~4x encoder calls
            min_seconds = (0.5 if quick else 3.0) if work < 4096 else (2.0 if quick else 10.0)
            times = time_interleaved(fns, min_reps=3 if quick else 7, min_seconds=min_seconds)
            entry: dict[str, Any] = {"graph": graph, "batch": n}
            for engine, ts in times.items():
                median = statistics.median(ts)
                entry[engine] = {"median_s": median, "images_per_s": n / median, "calls": len(ts)}
            entry["ratio"] = entry["torch"]["median_s"] / entry["onnxruntime"]["median_s"]
            results.append(entry)
            print(f"  {graph} batch {n}: onnxruntime {entry['onnxruntime']['images_per_s']:,.0f}/s, "
                  f"torch {entry['torch']['images_per_s']:,.0f}/s, x{entry['ratio']:.2f}", file=sys.stderr)
    return {"parity_max_abs_diff": parity, "results": results}


# -- processes --------------------------------------------------------------------------------


#: Runs ARGV in a child of a small, fresh interpreter and prints its wall time and peak RSS.
#: Launching from this (large) benchmark process would inherit its memory high-water mark:
#: Linux carries a process's max RSS across fork and exec.
LAUNCHER = """
import json, os, sys, time
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
print(json.dumps({"wall_s": wall, "max_rss_kb": usage.ru_maxrss, "exit": os.waitstatus_to_exitcode(status)}))
"""


def run_process(args: list[str]) -> tuple[float, int]:
    """Run a process to completion: (wall seconds, peak RSS in bytes). Exits on failure."""
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, shutil.which(args[0]) or args[0], *args[1:]],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SystemExit(f"launcher failed for {' '.join(args[:3])}: {proc.stderr[-500:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if report["exit"] != 0:
        raise SystemExit(f"{' '.join(args[:3])} ... failed (exit {report['exit']}): {proc.stderr[-500:]}")
    return report["wall_s"], report["max_rss_kb"] * 1024


TORCH_SAMPLE_SCRIPT = '''
import json, sys
import torch
from PIL import Image
from edgevae.training.model import VAE, ModelConfig

config_path, weights_path, out_path, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
with open(config_path) as f:
    config = ModelConfig.from_dict(json.load(f))
model = VAE(config)
model.load_state_dict(torch.load(weights_path, weights_only=True))
model.eval()
with torch.inference_mode():
    z = torch.randn(1, config.latent_dim, generator=torch.Generator().manual_seed(0))
    pixels = model.mean_image(z)
Image.fromarray(pixels[0, 0].numpy(), mode="L").save(out_path)
'''


def edgevae_command(python: Path) -> Path:
    """The ``edgevae`` console script next to a venv's python."""
    script = python.parent / "edgevae"
    if not script.is_file():
        raise SystemExit(f"{script} not found: install the project (pip install -e .) first")
    return script


def measure_cold_start(bundle: Any, state_dict: Any, threads: int, runs: int, work: Path,
                       extra: dict[str, Path] | None = None) -> dict[str, Any]:
    """Whole-process wall time and peak RSS of one sample, edgevae vs PyTorch, alternating."""
    import torch

    config_path, weights_path, script_path = work / "config.json", work / "weights.pt", work / "sample_torch.py"
    config_path.write_text(json.dumps(bundle.manifest["training"]["model_config"]))
    torch.save(state_dict, weights_path)
    script_path.write_text(TORCH_SAMPLE_SCRIPT)
    commands = {
        "edgevae": [str(edgevae_command(Path(sys.executable))), "sample", "-n", "1", "--seed", "0", "--force",
                    "--threads", str(threads), "--model", str(bundle.path), "-o", str(work / "edgevae.png")],
        "torch": [sys.executable, str(script_path), str(config_path), str(weights_path), str(work / "torch.png"),
                  str(threads)],
    }
    for name, python in (extra or {}).items():
        commands[name] = [str(edgevae_command(python)), *commands["edgevae"][1:]]
    samples: dict[str, dict[str, list[float]]] = {name: {"wall_s": [], "rss": []} for name in commands}
    for round_ in range(runs + 1):  # round 0 warms the page cache and is dropped
        for name, args in commands.items():
            wall, rss = run_process(args)
            if round_:
                samples[name]["wall_s"].append(wall)
                samples[name]["rss"].append(rss)
    return {name: {"median_s": statistics.median(s["wall_s"]), "min_s": min(s["wall_s"]), "runs": s["wall_s"],
                   "peak_rss_mb": max(s["rss"]) / MB, "command": " ".join(commands[name])}
            for name, s in samples.items()}


# -- footprint ----------------------------------------------------------------------------------


def tree_bytes(path: Path) -> int:
    """Apparent size of every regular file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure_footprint(work: Path) -> dict[str, Any]:
    """Wheel size, fresh runtime-only venv's site-packages, torch's installed size."""
    wheels = work / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(wheels)],
                   check=True, stdout=subprocess.DEVNULL)
    [wheel] = list(wheels.glob("edgevae-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    bundles = sorted({n.split("/")[2] for n in names if n.startswith("edgevae/exported/") and n.endswith(".onnx")})
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(wheel)], check=True)
    [site] = list(venv.glob("lib/python*/site-packages"))
    by_entry = sorted(((tree_bytes(p) if p.is_dir() else p.stat().st_size, p.name) for p in site.iterdir()),
                      reverse=True)
    torch_dist = metadata.distribution("torch")
    torch_bytes = sum(f.locate().stat().st_size for f in torch_dist.files or [] if f.locate().is_file())
    return {
        "wheel": {"file": wheel.name, "mb": wheel.stat().st_size / MB, "bundles": bundles},
        "runtime_venv": {"site_packages_mb": tree_bytes(site) / MB, "has_torch": (site / "torch").exists(),
                         "largest": [{"entry": name, "mb": size / MB} for size, name in by_entry[:8]],
                         "python": str(python)},
        "torch": {"version": torch_dist.version, "mb": torch_bytes / MB},
    }


# -- compress memory ----------------------------------------------------------------------------


def measure_compress(bundle: Any, images: np.ndarray, threads: int, work: Path) -> dict[str, Any]:
    """Peak RSS and wall time of ``edgevae compress`` over COMPRESS_IMAGES images, if it exists."""
    script = str(edgevae_command(Path(sys.executable)))
    probe = subprocess.run([script, "compress", "--help"], capture_output=True)
    if probe.returncode != 0:
        return {"available": False}
    source = work / "images.npy"
    np.save(source, images[:COMPRESS_IMAGES])
    out = work / "images.evz"
    wall, rss = run_process([script, "compress", str(source), "-o", str(out), "--force", "--threads", str(threads),
                                "--model", str(bundle.path)])
    count = min(COMPRESS_IMAGES, len(images))
    return {"available": True, "images": count, "wall_s": wall, "peak_rss_mb": rss / MB,
            "bytes": out.stat().st_size, "bits_per_image": 8 * out.stat().st_size / count}


# -- precision variants -------------------------------------------------------------------------


def measure_variants(bundle: Any, threads: int, train: np.ndarray, test: np.ndarray, work: Path,
                     quick: bool) -> dict[str, Any]:
    """int8 and fp16 bundles from the fp32 one: size, speed vs fp32 (interleaved), quality."""
    from edgevae.runtime import contract, load
    from edgevae.training.precision import bundle_quality, make_variant

    folders = {"fp32": bundle.path}
    checks = {}
    for precision in ("int8", "fp16"):
        print(f"  making the {precision} variant", file=sys.stderr)
        folders[precision] = work / f"{bundle.name}-{precision}"
        checks[precision] = make_variant(bundle.path, folders[precision], precision, train, test,
                                         force=True, enforce=False)["variant"]["check"]
    models = {p: load(f, threads=threads) for p, f in folders.items()}
    eval_images = test[:2000] if quick else test
    out: dict[str, Any] = {"images": len(eval_images), "variants": {}}
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((1024, bundle.latent_dim), dtype=np.float32)
    speed: dict[str, dict[str, float]] = {p: {} for p in models}
    for graph in ("encoder", "decoder"):
        for n in (1, 1024):
            if graph == "encoder":
                fns = {p: (lambda m=m: m.encode(test[:n])) for p, m in models.items()}
            else:
                fns = {p: (lambda m=m: m.decode(latents[:n])) for p, m in models.items()}
            times = time_interleaved(fns, min_reps=3 if quick else 7,
                                     min_seconds=(0.5 if quick else 3.0) if n == 1 else (2.0 if quick else 10.0))
            for p, ts in times.items():
                speed[p][f"{graph}_b{n}_images_per_s"] = n / statistics.median(ts)
    for precision, model in models.items():
        print(f"  quality of {precision} on {len(eval_images)} test images", file=sys.stderr)
        size = sum(model.bundle.graph_path(spec).stat().st_size for spec in contract.GRAPHS)
        out["variants"][precision] = {"graphs_mb": size / MB, "speed": speed[precision],
                                      "quality": bundle_quality(model, eval_images),
                                      "rd": rate_distortion(model, test[:RD_IMAGES]),
                                      "check": checks.get(precision)}
    return out


def rate_distortion(model: Any, images: np.ndarray) -> list[dict[str, Any]]:
    """(bits/pixel, PSNR) of the lossy codec at each quality, one container over ``images``."""
    if model.bundle.codec_path is None:
        return []
    from edgevae.runtime.codec import Codec
    from edgevae.runtime.images import psnr

    codec = Codec(model)
    points = []
    for quality in codec.lossy_qualities:
        data = codec.compress(images, quality=quality)
        decoded = codec.decompress(data)
        points.append({"quality": quality, "default": quality == codec.default_quality,
                       "bits_per_pixel": 8 * len(data) / images.size,
                       "psnr_db": float(psnr(images, decoded).mean())})
    return points


# -- report -----------------------------------------------------------------------------------


def environment(threads: int, bundle: Any) -> dict[str, Any]:
    """Machine, versions and bundle identity."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("edgevae", "onnxruntime", "torch", "numpy", "onnx"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "versions": versions, "git_commit": commit, "load_average": os.getloadavg(),
            "bundle": {"name": bundle.name, "path": str(bundle.path), "precision": bundle.precision,
                       "fingerprint": bundle.fingerprint.hex()[:16]},
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def speed_rows(speed: dict[str, Any], flops: dict[str, Any], peak: dict[str, Any]) -> list[Row]:
    """Rows for the engines' speed, GFLOP/s and the peak."""
    rows = []
    for entry in speed["results"]:
        n, ort_, pt = entry["batch"], entry["onnxruntime"], entry["torch"]
        bar = BAR_SPEEDUP.get(n)
        rows.append(Row(f"{entry['graph']} batch {n}, images/s (median ms/call)",
                        f"{ort_['images_per_s']:,.0f} ({1e3 * ort_['median_s']:.2f} ms)",
                        f"torch {pt['images_per_s']:,.0f} ({1e3 * pt['median_s']:.2f} ms)",
                        f"{entry['ratio']:.2f}x", f">= {bar}x" if bar else "",
                        status(entry["ratio"] >= bar) if bar else ""))
    rows.append(Row(f"fp32 matmul peak ({PEAK_N}^3, best)", f"{peak['gflops']:.1f} GFLOP/s"))
    for entry in speed["results"]:
        if entry["batch"] != max(r["batch"] for r in speed["results"]):
            continue
        graph, n = entry["graph"], entry["batch"]
        per_image = flops[graph]["per_image"]
        achieved = per_image * entry["onnxruntime"]["images_per_s"] / 1e9
        torch_achieved = per_image * entry["torch"]["images_per_s"] / 1e9
        fraction = achieved / peak["gflops"]
        is_bar = graph == "decoder"
        rows.append(Row(f"{graph} batch {n}, GFLOP/s ({per_image / 1e6:.1f} MFLOP/image)",
                        f"{achieved:.1f} = {100 * fraction:.0f}% of peak",
                        f"torch {torch_achieved:.1f} = {100 * torch_achieved / peak['gflops']:.0f}%", "",
                        f">= {100 * BAR_DECODER_PEAK_FRACTION:.0f}%" if is_bar else "",
                        status(fraction >= BAR_DECODER_PEAK_FRACTION) if is_bar else ""))
    return rows


def cold_rows(cold: dict[str, Any], runs: int) -> list[Row]:
    """Rows for cold start."""
    ev, pt = cold["edgevae"], cold["torch"]
    ratio = ev["median_s"] / pt["median_s"]
    ok = ev["median_s"] <= BAR_COLD_START_S and ratio <= BAR_COLD_START_RATIO
    rows = [Row(f"cold start: sample -n 1 -o x.png, median of {runs} (peak RSS)",
                f"{ev['median_s']:.3f} s ({ev['peak_rss_mb']:.0f} MB)",
                f"torch {pt['median_s']:.3f} s ({pt['peak_rss_mb']:.0f} MB)", f"{ratio:.2f}x",
                f"<= {BAR_COLD_START_S} s, <= {BAR_COLD_START_RATIO}x", status(ok))]
    if "fresh_venv" in cold:
        fresh = cold["fresh_venv"]
        rows.append(Row("cold start, fresh runtime-only venv (pip install of the wheel)",
                        f"{fresh['median_s']:.3f} s ({fresh['peak_rss_mb']:.0f} MB)",
                        f"torch {pt['median_s']:.3f} s", f"{fresh['median_s'] / pt['median_s']:.2f}x",
                        f"<= {BAR_COLD_START_S} s", status(fresh["median_s"] <= BAR_COLD_START_S)))
    return rows


def footprint_rows(fp: dict[str, Any]) -> list[Row]:
    """Rows for install size."""
    venv, torch_ = fp["runtime_venv"], fp["torch"]
    top = ", ".join(f"{e['entry']} {e['mb']:.0f}" for e in venv["largest"][:4])
    mb = venv["site_packages_mb"]
    return [
        Row(f"runtime venv site-packages, MB ({top})", f"{mb:.1f} MB" + (" (has torch!)" if venv["has_torch"] else ""),
            f"torch {torch_['version']} alone {torch_['mb']:.0f} MB", f"{mb / torch_['mb']:.2f}x",
            f"<= {BAR_VENV_MB:.0f} MB",
            status(mb <= BAR_VENV_MB and not venv["has_torch"]) + ("" if mb <= BAR_VENV_MB else
                                                                   f" (+{mb - BAR_VENV_MB:.0f} MB)")),
        Row("edgevae wheel incl. shipped bundles", f"{fp['wheel']['mb']:.2f} MB",
            "bundles: " + (", ".join(fp["wheel"]["bundles"]) or "NONE")),
    ]


def memory_rows(mem: dict[str, Any] | None) -> list[Row]:
    """Row for compress peak RSS."""
    if mem is None:
        return []
    if not mem["available"]:
        return [Row(f"edgevae compress {COMPRESS_IMAGES:,} images, peak RSS", "codec not available",
                    status="n/a")]
    return [Row(f"edgevae compress {mem['images']:,} images, peak RSS", f"{mem['peak_rss_mb']:.0f} MB",
                f"{mem['wall_s']:.1f} s, {mem['bits_per_image']:.0f} bits/image")]


def variant_rows(var: dict[str, Any]) -> list[Row]:
    """Rows for int8 / fp16 against fp32."""
    rows = []
    base = var["variants"]["fp32"]
    for precision in ("int8", "fp16"):
        v = var["variants"][precision]
        rows.append(Row(f"{precision} bundle graphs size", f"{v['graphs_mb']:.2f} MB", f"fp32 {base['graphs_mb']:.2f} MB",
                        f"{v['graphs_mb'] / base['graphs_mb']:.2f}x"))
        faster = True
        for key, label in (("encoder_b1", "encoder batch 1"), ("encoder_b1024", "encoder batch 1024"),
                           ("decoder_b1", "decoder batch 1"), ("decoder_b1024", "decoder batch 1024")):
            mine, ref = v["speed"][f"{key}_images_per_s"], base["speed"][f"{key}_images_per_s"]
            faster &= mine > ref
            rows.append(Row(f"{precision} {label}, images/s", f"{mine:,.0f}", f"fp32 {ref:,.0f}", f"{mine / ref:.2f}x"))
        loss = base["quality"]["psnr_db"] - v["quality"]["psnr_db"]
        rows.append(Row(f"{precision} reconstruction PSNR, {var['images']:,} test images",
                        f"{v['quality']['psnr_db']:.3f} dB", f"fp32 {base['quality']['psnr_db']:.3f} dB",
                        f"{-loss:+.3f} dB", f"loss <= {BAR_INT8_PSNR_LOSS_DB} dB" if precision == "int8" else "",
                        status(loss <= BAR_INT8_PSNR_LOSS_DB) if precision == "int8" else ""))
        rows.append(Row(f"{precision} negative ELBO (1 sample), bits/dim", f"{v['quality']['nelbo_bpd']:.4f}",
                        f"fp32 {base['quality']['nelbo_bpd']:.4f}",
                        f"{v['quality']['nelbo_bpd'] - base['quality']['nelbo_bpd']:+.4f}"))
        for mine, ref in zip(v["rd"], base["rd"]):
            if mine["default"]:
                rows.append(Row(f"{precision} codec quality {mine['quality']}, {RD_IMAGES:,} images: bits/pixel, PSNR",
                                f"{mine['bits_per_pixel']:.4f}, {mine['psnr_db']:.2f} dB",
                                f"fp32 {ref['bits_per_pixel']:.4f}, {ref['psnr_db']:.2f} dB"))
        if precision == "int8":
            worth = faster and loss <= BAR_INT8_PSNR_LOSS_DB
            rows.append(Row("int8 worth shipping (faster everywhere and loses <= 0.3 dB)", "yes" if worth else "no",
                            status="PASS" if worth else "MISS"))
    return rows


def rd_markdown(var: dict[str, Any] | None) -> str:
    """The codec's rate-distortion points of every variant as a Markdown table (or nothing)."""
    if not var or not var["variants"]["fp32"]["rd"]:
        return ""
    precisions = list(var["variants"])
    lines = [f"\n## Codec rate-distortion per precision ({RD_IMAGES:,} test images, one container)\n",
             "| quality | " + " | ".join(f"{p} bits/pixel | {p} PSNR dB" for p in precisions) + " |",
             "|---|" + "---|---|" * len(precisions)]
    for i, point in enumerate(var["variants"]["fp32"]["rd"]):
        cells = [f"{var['variants'][p]['rd'][i]['bits_per_pixel']:.4f} | {var['variants'][p]['rd'][i]['psnr_db']:.2f}"
                 for p in precisions]
        lines.append(f"| {point['quality']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(rows: list[Row], markdown: bool) -> str:
    """The table as aligned text or as a Markdown table."""
    header = Row("measure", "edgevae (onnxruntime)", "reference", "ratio", "bar", "status")
    cells = [list(asdict(r).values()) for r in [header, *rows]]
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the sections, print the table and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="fp32 bundle folder (default: $EDGEVAE_MODEL, else shipped)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both engines (default 2)")
    parser.add_argument("--batches", default="1,64,1024", help="batch sizes for the speed section")
    parser.add_argument("--cold-runs", type=int, default=9, help="process launches per command (default 9)")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to skip: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (numbers only indicative)")
    outdir.add_options(parser, "speed")
    args = parser.parse_args(argv)
    out = outdir.folder(args, "speed")  # before the work: a bad --out fails at once
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(SECTIONS):
        parser.error(f"unknown sections {sorted(skip - set(SECTIONS))}; known: {', '.join(SECTIONS)}")
    batches = tuple(int(b) for b in args.batches.split(","))

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from edgevae.runtime import contract
    from edgevae.runtime.bundle import read_bundle
    from edgevae.training.data import load_dataset

    bundle = read_bundle(args.model)
    if bundle.precision != "fp32":
        raise SystemExit(f"{bundle.path} is a {bundle.precision} bundle; benchmark the fp32 one (variants are made)")
    train_config = bundle.manifest["training"]["train_config"]
    data = load_dataset(train_config["dataset"], bundle.image_shape)
    env = environment(args.threads, bundle)
    results: dict[str, Any] = {"command": " ".join(["python", "benchmarks/speed.py", *sys.argv[1:]]),
                               "quick": args.quick, "environment": env}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgevae-speed-") as tmp:
        work = Path(tmp)
        vae = torch_model_from_bundle(bundle)
        if "speed" not in skip:
            print("measuring speed", file=sys.stderr)
            results["peak"] = matmul_peak(args.threads, args.quick)
            results["flops"] = {spec.key: graph_flops(bundle.graph_path(spec)) for spec in contract.GRAPHS}
            results["speed"] = measure_speed(bundle, vae, args.threads, batches, data.test, args.quick)
            rows += speed_rows(results["speed"], results["flops"], results["peak"])
        fresh_python = None
        if "footprint" not in skip:
            print("building the wheel and a fresh runtime venv", file=sys.stderr)
            results["footprint"] = measure_footprint(work)
            fresh_python = Path(results["footprint"]["runtime_venv"]["python"])
        if "cold" not in skip:
            print("measuring cold start", file=sys.stderr)
            extra = {"fresh_venv": fresh_python} if fresh_python else None
            results["cold_start"] = measure_cold_start(bundle, vae.state_dict(), args.threads, args.cold_runs, work,
                                                       extra)
            rows += cold_rows(results["cold_start"], args.cold_runs)
        if "footprint" not in skip:
            rows += footprint_rows(results["footprint"])
        if "memory" not in skip:
            print("measuring compress memory", file=sys.stderr)
            results["memory"] = measure_compress(bundle, data.test, args.threads, work)
            rows += memory_rows(results["memory"])
        if "variants" not in skip:
            print("measuring int8 / fp16 variants", file=sys.stderr)
            results["variants"] = measure_variants(bundle, args.threads, data.train, data.test, work, args.quick)
            rows += variant_rows(results["variants"])
    results["rows"] = [asdict(r) for r in rows]
    title = (f"edgevae speed: bundle {bundle.name} ({env['bundle']['fingerprint']}), {args.threads} threads, "
             f"{env['cpu']} ({env['cores']} cores), onnxruntime {env['versions']['onnxruntime']}, "
             f"torch {env['versions']['torch']}" + (" [QUICK: indicative only]" if args.quick else ""))
    print(title)
    print(render(rows, markdown=False), flush=True)
    (out / "speed.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "speed.md").write_text(textwrap.dedent(f"""\
        # Speed benchmark

        `{results['command']}` on {env['date_utc']} UTC, git {env['git_commit'] or 'unknown'}.
        {title}. Load average at start: {', '.join(f'{x:.2f}' for x in env['load_average'])}.

        """) + render(rows, markdown=True) + "\n\nMethod: see the docstring of benchmarks/speed.py; raw numbers "
        "in speed.json.\n" + rd_markdown(results.get("variants")))
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
