"""Training throughput on 1 and 2 processes (torchrun + DDP, gloo, one thread each), and the
folder-streaming loader against the in-memory path, in images per second.

    python benchmarks/train_scaling.py --update         # 8,192 Fashion-MNIST images, default model
    python benchmarks/train_scaling.py --images 2048    # a quicker look

Training: the product's ``train`` on the first ``--images`` Fashion-MNIST training images (held in
memory, so the loader costs nothing), one epoch after one warm-up epoch, default model sizes
(widths 32,64,128, latent 32) and batch 128 unless told otherwise; images/s = images / seconds
of the timed epoch's optimisation steps (evaluation excluded); CPU ms per image = CPU time of all
processes over the whole run / images trained on (a measure other jobs on the machine do not skew). The 2-process run is
``torchrun --standalone --nproc-per-node 2`` with OMP_NUM_THREADS=1: the same global batch of 128,
64 images per process, one all-reduce of every gradient per step.

Loader: the same images written as PNG files, decoded + resized + cropped by
``edgevae.training.data.stream_batches`` with 0, 1 and 2 DataLoader workers, batches of 128,
against slicing the in-memory array. Needs Fashion-MNIST (/usr/share/datasets/fashion-mnist) and
the training extras. Writes train_scaling.json (every number) and .md (tables) to
runs/bench/train_scaling/ or ``--out`` (``--update``: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import outdir



def model_and_config(args: argparse.Namespace) -> tuple[Any, Any]:
    from edgevae.training.model import ModelConfig
    from edgevae.training.train import TrainConfig

    model = ModelConfig(latent_dim=32, channels=tuple(int(w) for w in args.widths.split(",")), res_blocks=0,
                        mixture_components=5)
    # Two epochs: the first warms up (allocator, thread pools, gloo buffers); the second is timed.
    config = TrainConfig(dataset="fashion-mnist", epochs=2, batch_size=args.batch_size, warmup_steps=10, seed=0)
    return model, config


def subset(count: int) -> Any:
    from edgevae.training.data import Dataset, load_fashion_mnist

    data = load_fashion_mnist()
    return Dataset("fashion-mnist", data.train[:count], data.test[:256], data.fingerprint)


def worker(args: argparse.Namespace) -> None:
    """One training process (plain or under torchrun): train, then rank 0 prints a JSON line."""
    import torch

    from edgevae.training import distributed
    from edgevae.training.train import train

    torch.set_num_threads(1)
    context = distributed.start("cpu")
    try:
        model, config = model_and_config(args)
        data = subset(args.images)
        with tempfile.TemporaryDirectory() as tmp:
            cpu_before = _cpu_seconds()
            train(data, model, config, Path(tmp) / "run", log=lambda _: None, context=context)
            # CPU time of every process (both epochs and evaluations): robust to other jobs' load.
            cpu = sum(context.all_gather(_cpu_seconds() - cpu_before))
            if context.is_main:
                rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
                print("RESULT " + json.dumps({"seconds": rows[-1]["seconds"], "images": len(data.train),
                                               "processes": context.world_size, "cpu_seconds": cpu,
                                               "trained_images": len(data.train) * config.epochs,
                                               "test_nelbo_bpd": rows[-1]["test_nelbo_bpd"],
                                               "parameters": sum(p.numel() for p in torch.nn.Module.parameters(
                                                   _model_of(model)))}), flush=True)
    finally:
        distributed.stop(context)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _model_of(config: Any) -> Any:
    from edgevae.training.model import VAE

    return VAE(config)


def run_training(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    common = [str(Path(__file__).resolve()), "--worker", "--images", str(args.images), "--widths", args.widths,
              "--batch-size", str(args.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, *common]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                   *common]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"training run on {processes} process(es) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["images_per_s"] = result["images"] / result["seconds"]
    result["cpu_ms_per_image"] = 1000 * result["cpu_seconds"] / result["trained_images"]
    return result


def loader_speeds(args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgevae.training.data import ImageFiles, stream_batches

    data = subset(args.loader_images)
    images = data.train
    out = []
    batches = [list(range(s, min(s + args.batch_size, len(images)))) for s in range(0, len(images), args.batch_size)]
    started = time.perf_counter()
    for batch in batches:
        np.ascontiguousarray(images[batch])
    seconds = time.perf_counter() - started
    out.append({"path": "in memory (array slicing)", "workers": 0, "images_per_s": len(images) / seconds})
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, image in enumerate(images):
            path = Path(tmp) / f"{i // 1000:03d}" / f"{i:06d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(image[0], mode="L").save(path)
            paths.append(path)
        files = ImageFiles(paths, (1, 28, 28))
        keyed = [[(i, i) for i in batch] for batch in batches]
        for workers in args.loader_workers:
            started = time.perf_counter()
            count = sum(len(keys) for keys, _, _ in stream_batches(files, keyed, workers))
            seconds = time.perf_counter() - started
            out.append({"path": "folder streamed (PNG decode + resize + crop)", "workers": workers,
                        "images_per_s": count / seconds})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8192, help="Training images per epoch.")
    parser.add_argument("--loader-images", type=int, default=4096, help="Images the loader benchmark decodes.")
    parser.add_argument("--loader-workers", type=lambda t: [int(v) for v in t.split(",")], default=[0, 1, 2])
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--batch-size", type=int, default=128, help="The global batch.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    outdir.add_options(parser, "train_scaling")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    out = outdir.folder(args, "train_scaling")  # before the work: a bad --out fails at once

    import torch

    load_before = os.getloadavg()
    runs = [run_training(args, n) for n in (1, 2)]
    for run in runs:
        print(f"training, {run['processes']} process(es): {run['images_per_s']:.0f} images/s", flush=True)
    loader = loader_speeds(args)
    parameters = runs[0]["parameters"]
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.machine(), "torch": torch.__version__,
                    "python": platform.python_version(), "load_average_at_end": os.getloadavg()},
        "load_average_at_start": load_before,
        "settings": {"images": args.images, "batch_size": args.batch_size, "widths": args.widths,
                     "threads_per_process": 1, "loader_images": args.loader_images},
        "training": runs,
        "speedup_2_over_1": runs[1]["images_per_s"] / runs[0]["images_per_s"],
        "parameters": parameters,
        "allreduce_bytes_per_step": parameters * 4,
        "loader": loader,
    }
    (out / "train_scaling.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [
        f"Training throughput, Fashion-MNIST ({args.images} training images in memory, batch {args.batch_size} global), "
        f"widths {args.widths}, latent 32, {parameters:,} parameters; one torch thread per process; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; load average "
        f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (the machine is shared).",
        "",
        "| processes | images/s | speed-up | CPU ms per trained image, all processes | test NELBO after 2 epochs (bits/dim) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        md.append(f"| {run['processes']} | {run['images_per_s']:.0f} | {run['images_per_s'] / runs[0]['images_per_s']:.2f}x "
                  f"| {run['cpu_ms_per_image']:.2f} | {run['test_nelbo_bpd']:.4f} |")
    md += ["", "CPU ms per image: CPU time of all processes over both epochs and their evaluations, per "
               "training image seen; its growth from 1 to 2 processes is what DDP costs (all-reduce, "
               "smaller per-process batches), independent of how busy the machine is."]
    md += ["", f"Gradient all-reduce per step: {parameters * 4 / 1e6:.2f} MB (every parameter, float32).", "",
           f"Loader, {args.loader_images} images, batches of {args.batch_size}:", "",
           "| path | workers | images/s |", "|---|---:|---:|"]
    for row in loader:
        md.append(f"| {row['path']} | {row['workers']} | {row['images_per_s']:,.0f} |")
    (out / "train_scaling.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
