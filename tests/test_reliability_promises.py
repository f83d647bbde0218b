"""Promises of README that no other test would notice breaking: --force for compress and
decompress, the lossless pixel checksum as the last line of defence, ``train --resume`` through
the CLI, and permission errors that hold when the suite runs as root (as CI does)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import is_root, synthetic_images, write_pngs
from edgevae.runtime.cli import main

SHIPPED = Path(__file__).resolve().parent.parent / "exported"


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], env={"EDGEVAE_MODEL": None})
    return result.exit_code, result.stdout, result.stderr


def assert_one_error(code: int, stderr: str, *phrases: str) -> None:
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


# -- --force, for compress and decompress -----------------------------------------------------------


@pytest.mark.parametrize("lossless", [False, True])
def test_compress_and_decompress_honour_force(lossless: bool, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", synthetic_images(3))
    mode = ["--lossless"] if lossless else []
    cases = [(["compress", tmp_path / "x.npy", *mode, "-o"], tmp_path / "x.evz"),
             (["decompress", tmp_path / "x.evz", "-o"], tmp_path / "back.npy"),
             (["decompress", tmp_path / "x.evz", "-o"], tmp_path / "back.png")]
    (tmp_path / "x.evz").write_bytes(b"precious")
    code, _, err = invoke(*cases[0][0], tmp_path / "x.evz")
    assert_one_error(code, err, "x.evz", "already exists", "--force")
    assert (tmp_path / "x.evz").read_bytes() == b"precious"
    assert invoke(*cases[0][0], tmp_path / "x.evz", "--force")[0] == 0
    assert (tmp_path / "x.evz").read_bytes().startswith(b"EVZ") or (tmp_path / "x.evz").read_bytes() != b"precious"
    for args, target in cases[1:]:
        target.write_bytes(b"precious")
        code, _, err = invoke(*args, target)
        assert_one_error(code, err, target.name, "already exists", "--force")
        assert target.read_bytes() == b"precious"
        assert invoke(*args, target, "--force")[0] == 0
        assert target.read_bytes() != b"precious"
    if lossless:
        np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), synthetic_images(3))


def test_compress_split_honours_force(tmp_path: Path) -> None:
    write_pngs(synthetic_images(3), tmp_path / "in")
    (tmp_path / "evz").mkdir()
    (tmp_path / "evz" / "001.evz").write_bytes(b"precious")
    code, _, err = invoke("compress", tmp_path / "in", "--split", "-o", tmp_path / "evz")
    assert_one_error(code, err, "001.evz", "already exists", "--force")
    assert sorted(os.listdir(tmp_path / "evz")) == ["001.evz"]  # all or nothing: 000.evz not written
    assert invoke("compress", tmp_path / "in", "--split", "-o", tmp_path / "evz", "--force")[0] == 0
    assert sorted(os.listdir(tmp_path / "evz")) == ["000.evz", "001.evz", "002.evz"]
    assert (tmp_path / "evz" / "001.evz").read_bytes() != b"precious"


# -- lossless: the pixel checksum alone ------------------------------------------------------------------


@pytest.mark.slow
def test_only_the_pixel_checksum_stops_wrong_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decode that goes wrong without breaking the ANS chains (every chain still ends exactly
    empty, as on a machine whose network arithmetic differs in a way the chains do not notice):
    the payload's CRC of the pixels is then the only check left, and it must refuse."""
    from edgevae.runtime import bitsback, load
    from edgevae.runtime.codec import Codec, LosslessCodec
    from edgevae.runtime.errors import ContainerError

    codec = Codec(load(SHIPPED / "fashion-mnist", threads=1))
    images = synthetic_images(70)  # two chains, two lanes
    data = LosslessCodec(codec.model).compress(images)
    np.testing.assert_array_equal(codec.decompress(data), images)

    real = bitsback._decode_lane

    def decode_then_flip(job, out, coders, lane):  # type: ignore[no-untyped-def]
        real(job, out, coders, lane)
        if lane[0] == 0:
            out[0, 400] ^= 1  # one pixel, one bit, after the chains were checked
    monkeypatch.setattr(bitsback, "_decode_lane", decode_then_flip)
    with pytest.raises(ContainerError, match="does not decode to its pixel checksum"):
        codec.decompress(data)


# -- edgevae-train train --resume, through the CLI ---------------------------------------------------------


class _InterruptAtEpoch2:
    """Stands in for the CLI's progress bar and presses Ctrl-C early in epoch 2."""

    def __init__(self, label: str) -> None:
        self.label, self.loss, self.steps = label, "", 0

    def __enter__(self) -> "_InterruptAtEpoch2":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        self.steps += n
        if self.label.startswith("epoch 2/") and self.steps == 2:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_train_resume_through_the_cli(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgevae.training import cli as train_cli
    from edgevae.training.train import load_checkpoint

    runner = CliRunner()
    base = ["train", "--dataset", str(image_folder), "--epochs", "2", "--latent-dim", "4", "--widths", "4,8",
            "--components", "2", "--batch-size", "32", "--threads", "1"]
    unbroken = runner.invoke(train_cli.main, [*base, "--out", str(tmp_path / "unbroken")])
    assert unbroken.exit_code == 0, unbroken.output
    with monkeypatch.context() as patch:
        patch.setattr(train_cli, "progress_bar", lambda total, label: _InterruptAtEpoch2(label))
        broken = runner.invoke(train_cli.main, [*base, "--out", str(tmp_path / "broken")])
    assert broken.exit_code == 130, broken.output
    assert "interrupted" in broken.stderr and "--resume" in broken.stderr
    assert load_checkpoint(tmp_path / "broken")["epoch"] == 1
    resumed = runner.invoke(train_cli.main, ["train", "--dataset", str(image_folder), "--threads", "1",
                                             "--out", str(tmp_path / "broken"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.stdout and "after epoch 1" in resumed.stdout

    def rows(run: str) -> list[dict]:  # type: ignore[type-arg]
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert rows("broken") == rows("unbroken")
    for name, tensor in load_checkpoint(tmp_path / "unbroken")["model"].items():
        assert tensor.equal(load_checkpoint(tmp_path / "broken")["model"][name]), name
    again = runner.invoke(train_cli.main, [*base, "--out", str(tmp_path / "broken")])
    assert again.exit_code == 2 and "pass --resume" in again.stderr


# -- permissions, when running as root ---------------------------------------------------------------------


def _without_dac_override() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding
    set, so even root is bound by file permissions (chmod 000 then refuses root too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_bound_by_permissions(*args: object) -> subprocess.CompletedProcess[str]:
    """``edgevae ARGS`` in a process that file permissions bind, root or not."""
    env = {k: v for k, v in os.environ.items() if k != "EDGEVAE_MODEL"}
    preexec = _without_dac_override if is_root() else None
    if preexec is not None:
        probe = subprocess.run(["true"], preexec_fn=preexec, capture_output=True)  # noqa: PLW1509
        if probe.returncode != 0:
            pytest.skip("running as root without the right to drop capabilities: chmod cannot bind root here")
    return subprocess.run([sys.executable, "-m", "edgevae.runtime", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, preexec_fn=preexec)  # noqa: PLW1509


def test_unreadable_input_even_as_root(tmp_path: Path) -> None:
    [locked] = write_pngs(synthetic_images(1), tmp_path / "in")
    locked.chmod(0)
    try:
        proc = run_bound_by_permissions("encode", locked, "--model", SHIPPED / "fashion-mnist",
                                        "-o", tmp_path / "z.npy")
    finally:
        locked.chmod(0o644)
    assert_one_error(proc.returncode, proc.stderr, "000.png", "not readable")
    assert not (tmp_path / "z.npy").exists()


@pytest.mark.slow
def test_unwritable_output_folder_even_as_root(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", synthetic_images(2))
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "old.png").write_bytes(b"precious")
    folder.chmod(0o555)
    try:
        for target in ("out.npy", "old.png", "sub"):
            proc = run_bound_by_permissions("reconstruct", tmp_path / "x.npy", "--model", SHIPPED / "fashion-mnist",
                                            "-o", folder / target, "--force")
            assert_one_error(proc.returncode, proc.stderr, str(folder))
    finally:
        folder.chmod(0o755)
    assert sorted(os.listdir(folder)) == ["old.png"] and (folder / "old.png").read_bytes() == b"precious"
