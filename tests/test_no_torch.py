"""The runtime needs neither PyTorch nor onnx: prove it in processes where importing them fails.

A ``sitecustomize`` module on PYTHONPATH installs a meta-path finder that raises ImportError
for ``torch``, ``onnx``, ``onnxscript`` and all their submodules (``onnxruntime`` stays
importable), and at exit records which of them made it into ``sys.modules`` anyway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_images, write_pngs

BLOCKED = ("torch", "onnx", "onnxscript")

GUARD = f'''
import atexit, importlib.abc, json, os, sys

BLOCKED = {BLOCKED!r}


class BlockHeavyImports(importlib.abc.MetaPathFinder):
    """Make torch and onnx look uninstalled."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: the edgevae runtime must not need it")
        return None


sys.meta_path.insert(0, BlockHeavyImports())


@atexit.register
def report():
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    with open(os.environ["EDGEVAE_GUARD_REPORT"], "w") as f:
        json.dump({{"guarded": True, "leaked": leaked}}, f)
'''


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory):
    """Run ``python ARGS`` with torch/onnx blocked; returns (process, modules that leaked)."""
    site = tmp_path_factory.mktemp("guard")
    (site / "sitecustomize.py").write_text(GUARD)
    reports = tmp_path_factory.mktemp("guard-reports")
    counter = iter(range(10**6))

    def run(*args: object) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        report = reports / f"{next(counter)}.json"
        env = {k: v for k, v in os.environ.items() if k != "EDGEVAE_MODEL"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        env["EDGEVAE_GUARD_REPORT"] = str(report)
        proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env,
                              timeout=300)
        status = json.loads(report.read_text())
        assert status["guarded"]
        return proc, status["leaked"]

    return run


def test_the_guard_blocks_torch_and_onnx(guarded) -> None:
    """The guard itself works (both packages are installed in the test environment)."""
    for module in ("torch", "onnx", "onnx.checker", "onnxscript", "edgevae.training.model"):
        proc, leaked = guarded("-c", f"import {module}")
        assert proc.returncode != 0
        assert "ImportError" in proc.stderr and "is blocked" in proc.stderr
        assert leaked == []
    proc, _ = guarded("-c", "import onnxruntime")
    assert proc.returncode == 0, proc.stderr


def test_python_api_without_torch(guarded, tiny_bundle: Path) -> None:
    code = (
        "import numpy as np, edgevae.runtime as ev\n"
        f"m = ev.load({str(tiny_bundle)!r}, threads=1)\n"
        "x = m.sample(3, seed=0)\n"
        "mean, logvar = m.encode(x)\n"
        "assert m.reconstruct(x).shape == x.shape\n"
        "assert m.interpolate(x[0], x[1], steps=4).shape == (4, 1, 28, 28)\n"
        "print(int(x.sum()), mean.shape)\n"
    )
    proc, leaked = guarded("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("(3, 8)")
    assert leaked == []


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_pngs(synthetic_images(3, seed=8), tmp_path_factory.mktemp("no-torch-images"))


def edgevae_calls(bundle: Path, images: list[Path], out: Path) -> dict[str, list[object]]:
    """One call of every ``edgevae`` command, writing into ``out``."""
    return {
        "--help": ["--help"],
        "info": ["info", "--model", bundle, "--json"],
        "sample": ["sample", "-n", 4, "--seed", 1, "--model", bundle, "-o", out / "s.png"],
        "encode": ["encode", *images, "--model", bundle, "-o", out / "z.npy"],
        "decode": ["decode", out / "z.npy", "--model", bundle, "-o", out / "d"],
        "reconstruct": ["reconstruct", images[0], "--model", bundle, "-o", out / "r.npy"],
        "interpolate": ["interpolate", images[0], images[1], "--steps", 3, "--model", bundle, "-o", out / "i.png"],
        "compress": ["compress", *images, "--model", bundle, "-o", out / "c.evz"],
        "decompress": ["decompress", out / "c.evz", "--model", bundle, "-o", out / "c.npy"],
        "compress --lossless": ["compress", *images, "--lossless", "--model", bundle, "-o", out / "l.evz"],
        "decompress lossless": ["decompress", out / "l.evz", "--model", bundle, "-o", out / "l.npy"],
        "info CONTAINER": ["info", out / "l.evz", "--model", bundle, "--json"],
    }


@pytest.mark.slow
def test_every_command_without_torch(guarded, tiny_bundle: Path, image_files: list[Path], tmp_path: Path) -> None:
    calls = edgevae_calls(tiny_bundle, image_files, tmp_path)
    for name, args in calls.items():  # in order: decode reads what encode wrote
        proc, leaked = guarded("-m", "edgevae.runtime", *args)
        assert proc.returncode == 0, (name, proc.stderr)
        assert leaked == [], name
    assert json.loads(guarded("-m", "edgevae.runtime", *calls["info"])[0].stdout)["latent"]["dim"] == 8
    assert np.load(tmp_path / "z.npy").shape == (3, 8)
    assert np.load(tmp_path / "r.npy").shape == (1, 1, 28, 28)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "i.png").stat().st_size > 0
    assert np.load(tmp_path / "c.npy").shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), synthetic_images(3, seed=8))  # lossless: exact


def test_errors_without_torch(guarded, tiny_bundle: Path, tmp_path: Path) -> None:
    """Error paths stay one clean line too (nothing reaches for torch to format them)."""
    proc, leaked = guarded("-m", "edgevae.runtime", "decode", tmp_path / "absent.npy", "--model", tiny_bundle,
                           "-o", tmp_path / "d.png")
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: ") and len(proc.stderr.splitlines()) == 1
    assert leaked == []
