"""Every command of both command lines, with stdout on /dev/full and on a closed pipe: one line on
stderr naming stdout, exit code 2, no traceback (and nothing from the interpreter's shutdown).

The commands come from the click groups themselves; each needs an entry in the tables below (the
cheapest invocation that prints to stdout), so a new command without one fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import synthetic_images, write_pngs
from edgevae.runtime.cli import main as runtime_main
from edgevae.training.cli import main as training_main

#: Where stdout goes: a device that is always full (ENOSPC), or a pipe nobody reads (EPIPE).
SINKS = ("dev-full", "closed-pipe")

#: edgevae command -> invocations that print to stdout ({png}, {npy}, {evz}: inputs; {out}: a fresh folder).
RUNTIME_CASES: dict[str, list[list[str]]] = {
    "info": [["info"], ["info", "--json"], ["info", "{evz}"], ["info", "{evz}", "--json"]],
    "sample": [["sample", "-n", "2", "--seed", "0", "-o", "{out}/s.png"]],
    "reconstruct": [["reconstruct", "{png}", "-o", "{out}/r.png", "--json"]],
    "interpolate": [["interpolate", "{png}", "{png}", "--steps", "2", "-o", "{out}/i.png"]],
    "encode": [["encode", "{png}", "-o", "{out}/z.npy"]],
    "decode": [["decode", "{npy}", "-o", "{out}/d.png"]],
    "compress": [["compress", "{png}", "-o", "{out}/c.evz"], ["compress", "{png}", "-o", "-"]],
    "decompress": [["decompress", "{evz}", "-o", "{out}/d.png"], ["decompress", "{evz}", "-o", "-"]],
    "denoise": [["denoise", "{png}", "--sigma", "25", "-o", "{out}/n.png"]],
    "score": [["score", "{png}", "-o", "{out}/s.csv", "--json"], ["score", "{png}", "-o", "-"]],
}

#: edgevae-train command -> its cheapest real invocation on the tiny data of conftest.py ({images}:
#: a folder data set, {run} a copy of a trained run, {bundle} a copy of its bundle, {denoise_run} a
#: denoise-train run, {float_bundle} a nearest-upsampling bundle, {integer_run} its `integer` run,
#: {context_run} its `context` run), or None for a command that writes nothing to stdout (its progress goes to
#: stderr): that one must then succeed with stdout unusable.
TRAINING_CASES: dict[str, list[str] | None] = {
    "train": ["train", "--dataset", "{images}", "--epochs", "1", "--latent-dim", "4", "--widths", "4,8",
              "--components", "1", "--batch-size", "32", "--workers", "0", "--out", "{out}/run"],
    "evaluate": ["evaluate", "{run}", "--k", "1", "--limit", "8"],
    "export": ["export", "{run}", "-o", "{out}/bundle"],
    "codec-tables": ["codec-tables", "{bundle}"],
    "prior": ["prior", "{bundle}", "--epochs", "1", "--layers", "2", "--hidden", "8"],
    "denoise-train": None,
    "denoise-export": ["denoise-export", "{denoise_run}", "{out}/denoise-bundle"],
    "novelty-threshold": ["novelty-threshold", "{bundle}", "--images", "10", "--samples", "1"],
    "integer": ["integer", "{float_bundle}", "--epochs", "0", "--calibration-images", "32", "--out", "{out}/int-run"],
    "integer-export": ["integer-export", "{integer_run}", "-o", "{out}/exact"],
    "context": ["context", "{float_bundle}", "--epochs", "1", "--hidden", "4", "--layers", "1", "--batch-size", "32",
                "--out", "{out}/ctx-run"],
    "context-export": ["context-export", "{context_run}", "-o", "{out}/ctx"],
    "integer-context": ["integer-context", "{context_bundle}", "--integer", "{integer_source}", "--epochs", "0",
                        "--calibration-images", "32", "--out", "{out}/ictx-run"],
    "integer-context-export": ["integer-context-export", "{integer_context_run}", "-o", "{out}/ictx"],
}


def run_with_stdout(argv: list[str], sink: str, cwd: Path) -> tuple[int, str]:
    """Run ``python -m`` ``argv`` with stdout on ``sink``; returns (exit code, stderr)."""
    if sink == "dev-full":
        with open("/dev/full", "wb") as full:
            result = subprocess.run([sys.executable, "-m", *argv], stdout=full, stderr=subprocess.PIPE,
                                    cwd=cwd, timeout=600)
        return result.returncode, result.stderr.decode()
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child starts: its first write to stdout is EPIPE
    try:
        result = subprocess.run([sys.executable, "-m", *argv], stdout=write_end, stderr=subprocess.PIPE,
                                cwd=cwd, timeout=600)
    finally:
        os.close(write_end)
    return result.returncode, result.stderr.decode()


def assert_one_line_stdout_error(code: int, stderr: str, argv: list[str], progress: bool = False) -> None:
    """Exit code 2, no traceback, and one ``Error: stdout: ...`` line on stderr: the only line, or
    with ``progress`` the last one after the progress labels a training command shows first."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (argv, code, stderr)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, (argv, stderr)
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("Error: stdout: cannot write"), \
        (argv, stderr)
    assert progress or len(lines) == 1, (argv, stderr)


def test_every_command_has_an_entry() -> None:
    assert sorted(RUNTIME_CASES) == sorted(runtime_main.commands)
    assert sorted(TRAINING_CASES) == sorted(training_main.commands)


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("module, group", [("edgevae.runtime", runtime_main), ("edgevae.training", training_main)],
                         ids=["edgevae", "edgevae-train"])
def test_help_and_version_with_unwritable_stdout(module: str, group: Any, sink: str, tmp_path: Path) -> None:
    """--help of the group and of every command, and --version, print while arguments are parsed."""
    invocations = [["--help"], *([name, "--help"] for name in group.commands)]
    invocations += [["--version"]] if module == "edgevae.runtime" else []
    for args in invocations:
        argv = [module, *args]
        code, stderr = run_with_stdout(argv, sink, tmp_path)
        assert_one_line_stdout_error(code, stderr, argv)


# -- edgevae ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One image as PNG, one latent vector of the default model, one container of the codec bundle."""
    import edgevae.runtime as ev
    from edgevae.runtime.bundle import read_bundle

    folder = tmp_path_factory.mktemp("stdout-inputs")
    images = synthetic_images(1)
    png = write_pngs(images, folder)[0]
    npy = folder / "z.npy"
    np.save(npy, np.zeros((1, read_bundle().latent_dim), np.float32))
    evz = folder / "c.evz"
    evz.write_bytes(ev.open_codec("lossy").compress(images))
    return {"png": str(png), "npy": str(npy), "evz": str(evz)}


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("command", sorted(RUNTIME_CASES))
def test_edgevae_command_with_unwritable_stdout(command: str, sink: str, inputs: dict[str, str],
                                                tmp_path: Path) -> None:
    for i, case in enumerate(RUNTIME_CASES[command]):
        out = tmp_path / str(i)
        out.mkdir()
        argv = ["edgevae.runtime", *(arg.format(out=out, **inputs) for arg in case)]
        code, stderr = run_with_stdout(argv, sink, tmp_path)
        assert_one_line_stdout_error(code, stderr, argv)


# -- edgevae-train ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def denoise_run(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch denoise-train run from ``tiny_bundle`` (made by the library)."""
    from edgevae.runtime.bundle import read_bundle
    from edgevae.training.data import bundle_dataset
    from edgevae.training.denoise import DenoiseConfig, train_encoder

    run = tmp_path_factory.mktemp("denoise-run") / "run"
    data = bundle_dataset(read_bundle(tiny_bundle), None)
    train_encoder(data.train, data.test, DenoiseConfig(source=str(tiny_bundle), epochs=1, batch_size=32), run,
                  log=lambda _: None)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("command", sorted(TRAINING_CASES))
def test_edgevae_train_command_with_unwritable_stdout(command: str, sink: str, image_folder: Path, tiny_run: Path,
                                                      tiny_bundle: Path, request: pytest.FixtureRequest,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    shutil.copytree(tiny_run, run)  # commands that write into them get private copies
    shutil.copytree(tiny_bundle, bundle)
    places = {"images": image_folder, "run": run, "bundle": bundle, "out": out}
    case = TRAINING_CASES[command]
    if case is None:  # writes nothing to stdout: its cheapest run succeeds however stdout is
        argv = ["edgevae.training", "denoise-train", "--from", str(bundle), "--epochs", "1", "--batch-size", "32",
                "--out", str(out / "denoise-run")]
        code, stderr = run_with_stdout(argv, sink, tmp_path)
        assert code == 0 and "Traceback" not in stderr and "Exception ignored" not in stderr, (argv, stderr)
        return
    for fixture in ("denoise_run", "float_bundle", "integer_run", "context_run", "context_bundle", "integer_source",
                    "integer_context_run"):  # built only for the commands that need them
        if "{%s}" % fixture in case:
            places[fixture] = request.getfixturevalue(fixture)
    argv = ["edgevae.training", *(arg.format(**places) for arg in case)]
    code, stderr = run_with_stdout(argv, sink, tmp_path)
    assert_one_line_stdout_error(code, stderr, argv, progress=True)
