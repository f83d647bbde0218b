"""Reliability promises of the all-or-nothing writer and the CLI around it: a full disk, a failed
replacement, Ctrl-C and SIGTERM lose no existing file and leave no temporary file.

The failures here are real ones (a tiny tmpfs that fills up, a read-only tmpfs, /dev/full, signals
sent to a real process), not mocks, so they hold when the suite runs as root, as CI does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_images
from edgevae.runtime import outputs
from edgevae.runtime.errors import OutputError

SHIPPED = Path(__file__).resolve().parent.parent / "exported" / "fashion-mnist"
CLI = [sys.executable, "-m", "edgevae.runtime"]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*args: object, timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEVAE_MODEL"}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          **kwargs)


def one_error_line(proc: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 96 KiB tmpfs, to fill up for real. Skips (saying why) where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(proc.stderr or proc.stdout).strip()}): full-disk case not run")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def read_only_tmpfs(tmp_path: Path):
    """A read-only tmpfs holding one file ``old.bin``: writing fails even for root."""
    mount = tmp_path / "ro"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(proc.stderr or proc.stdout).strip()}): read-only case not run")
    (mount / "old.bin").write_bytes(b"old")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# -- the writer, in-process ---------------------------------------------------------------------


def test_full_disk_keeps_every_existing_file(small_tmpfs: Path) -> None:
    """Issue 12 item 1: --force over existing outputs, then a write that fails part-way."""
    outputs.write_files([(small_tmpfs / "m.npy", b"old mean"), (small_tmpfs / "lv.npy", b"old logvar")])
    before = tree(small_tmpfs)
    big = os.urandom(40 * 1024)
    with pytest.raises(OutputError, match="lv.npy: cannot write .No space left on device"):
        outputs.write_files([(small_tmpfs / "m.npy", big), (small_tmpfs / "lv.npy", big * 2)], force=True)
    assert tree(small_tmpfs) == before  # both old files back, no temporary file


def test_full_disk_folder_output_takes_everything_back(small_tmpfs: Path) -> None:
    (small_tmpfs / "evz").mkdir()
    outputs.write_files([(small_tmpfs / "evz" / "0001.evz", b"keep")])
    before = tree(small_tmpfs)
    payloads = [os.urandom(9000) for _ in range(20)]
    with pytest.raises(OutputError, match="No space left on device"):
        outputs.write_folder(small_tmpfs / "evz", payloads, suffix=".evz", force=True)
    assert tree(small_tmpfs) == before
    with pytest.raises(OutputError, match="No space left on device"):
        outputs.write_folder(small_tmpfs / "new" / "deeper", payloads, suffix=".evz")
    assert sorted(os.listdir(small_tmpfs)) == ["evz"]  # the folders it made are gone again


def test_a_failed_replacement_puts_back_what_was_replaced(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The second replacement fails for real (its new file sits on another file system, so the
    rename fails): the first target, already replaced by then, must get its old bytes back."""
    work = tmp_path / "work"
    work.mkdir()
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != work.stat().st_dev:
        other = Path(tempfile.mkdtemp(dir=shm))
        request.addfinalizer(lambda: shutil.rmtree(other, ignore_errors=True))
    else:
        other = request.getfixturevalue("small_tmpfs")
    first = work / "a.bin"
    first.write_bytes(b"old a")
    (work / "new-a").write_bytes(b"new a")
    (other / "new-b").write_bytes(b"new b")
    staged = [(str(work / "new-a"), first), (str(other / "new-b"), work / "b.bin")]
    with pytest.raises(OutputError, match="b.bin: cannot write .Invalid cross-device link"):
        outputs._replace_all(staged)
    assert first.read_bytes() == b"old a"
    assert sorted(p.name for p in work.iterdir()) == ["a.bin"]  # no backup, no b.bin


def test_replacing_never_writes_in_place(tmp_path: Path) -> None:
    """A hard link to the old file keeps the old bytes: the new version is a new file renamed
    into place, never the old file truncated and rewritten (no mock involved)."""
    target = tmp_path / "x.npy"
    outputs.atomic_write_bytes(target, b"version 1")
    os.link(target, tmp_path / "keep")
    outputs.atomic_write_bytes(target, b"version 2", force=True)
    assert target.read_bytes() == b"version 2"
    assert (tmp_path / "keep").read_bytes() == b"version 1"
    assert sorted(os.listdir(tmp_path)) == ["keep", "x.npy"]


def test_read_only_file_system_refuses_without_a_trace(read_only_tmpfs: Path) -> None:
    with pytest.raises(OutputError, match="not writable|Read-only file system"):
        outputs.atomic_write_bytes(read_only_tmpfs / "new.bin", b"data")
    with pytest.raises(OutputError, match="not writable|Read-only file system"):
        outputs.write_files([(read_only_tmpfs / "old.bin", b"new")], force=True)
    with pytest.raises(OutputError, match="not writable|Read-only file system"):
        outputs.write_folder(read_only_tmpfs / "folder", [b"a", b"b"])
    assert tree(read_only_tmpfs) == {"old.bin": b"old"}


def test_a_path_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OutputError, match="file: is not a folder"):
        outputs.atomic_write_bytes(tmp_path / "file" / "out.bin", b"data")
    with pytest.raises(OutputError, match="file"):
        outputs.write_folder(tmp_path / "file" / "sub", [b"a"])
    assert tree(tmp_path) == {"file": b"x"}


def test_a_dangling_symlink_counts_as_an_existing_output(tmp_path: Path) -> None:
    (tmp_path / "link.bin").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="already exists"):
        outputs.atomic_write_bytes(tmp_path / "link.bin", b"data")
    assert (tmp_path / "link.bin").is_symlink()


# -- signals, in a real process ------------------------------------------------------------------


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so Python turns it into
    KeyboardInterrupt even when the suite itself was started with SIGINT ignored (as a
    background job of a non-interactive shell is)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: A process that writes 200 files over 200 existing ones and signals itself part-way.
SIGNAL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from edgevae.runtime import outputs
    folder, when, signum = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    calls = []
    if when == "stage":
        real = outputs._stage
        def stage(path, data, temps):
            calls.append(path)
            if len(calls) == 120:
                os.kill(os.getpid(), signum)
            return real(path, data, temps)
        outputs._stage = stage
    else:  # in the middle of the replacements, while signals are held back
        real = os.replace
        def replace(src, dst):
            calls.append(dst)
            if len(calls) == 50:
                os.kill(os.getpid(), signum)
            return real(src, dst)
        outputs.os.replace = replace
    try:
        outputs.write_folder(folder, [b"new %d" % i for i in range(200)], force=True)
    except KeyboardInterrupt:
        print("interrupted")
        sys.exit(130)
    print("finished")
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("when", ["stage", "replace"])
def test_signal_during_a_multi_file_write(when: str, signum: int, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    outputs.write_folder(folder, [b"old %d" % i for i in range(200)])
    before = tree(folder)
    proc = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, str(folder), when, str(int(signum))],
                          capture_output=True, text=True, timeout=60, preexec_fn=_default_sigint)
    assert "Traceback" not in proc.stderr, proc.stderr
    if when == "stage":  # interrupted while writing: the old files, untouched
        assert (proc.returncode, proc.stdout.strip()) == (130, "interrupted"), proc
        assert tree(folder) == before
    else:  # the replacement finishes first, then the signal arrives: all new files
        assert (proc.returncode, proc.stdout.strip()) == (130, "interrupted"), proc
        assert tree(folder) == {f"{i:04d}.png": b"new %d" % i for i in range(200)}


def _interrupt_after(args: list[object], seconds: float, signum: int, cwd: Path) -> tuple[subprocess.Popen[str], float]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEVAE_MODEL"}
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, preexec_fn=_default_sigint)
    time.sleep(seconds)
    sent = time.monotonic()
    proc.send_signal(signum)
    proc.wait(timeout=60)
    return proc, time.monotonic() - sent


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_during_compress_split_leaves_nothing(signum: int, tmp_path: Path) -> None:
    """Issue 12 item 2: ``compress --split`` of many images, interrupted: exit 130, one line, and
    either every file or none, never a .tmp. A second run then works without --force."""
    np.save(tmp_path / "many.npy", np.repeat(synthetic_images(50), 2400, axis=0))  # 120,000 images: >= 8 s of work
    args = ["compress", "many.npy", "-o", "sp", "--split", "--threads", 1]
    proc, took = _interrupt_after(args, 2.0, signum, tmp_path)
    assert proc.returncode == 130, proc.stderr.read()
    assert proc.stderr.read().strip().splitlines()[-1] == "interrupted"
    assert took < 3.0  # within a second when the machine is idle; slack for a loaded CI
    assert not (tmp_path / "sp").exists()
    assert sorted(os.listdir(tmp_path)) == ["many.npy"]


@pytest.mark.slow
def test_issue_repro_encode_with_logvar_on_a_full_disk(small_tmpfs: Path, tmp_path: Path) -> None:
    """The exact repro of issue 12 item 1, through the CLI."""
    np.save(tmp_path / "ten.npy", synthetic_images(10))
    np.save(tmp_path / "many.npy", synthetic_images(600))
    out = ["-o", small_tmpfs / "m.npy", "--logvar", small_tmpfs / "lv.npy", "--model", SHIPPED]
    assert run_cli("encode", tmp_path / "ten.npy", *out).returncode == 0
    before = tree(small_tmpfs)
    one_error_line(run_cli("encode", tmp_path / "many.npy", *out, "--force"), "No space left on device")
    assert tree(small_tmpfs) == before


# -- lossless: Ctrl-C and forged containers -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_lossless_stops_within_a_second_of_ctrl_c(signum: int, tmp_path: Path) -> None:
    """Issue 12 item 3: the lanes' thread pool no longer waits for the whole job."""
    # 20,000 images: ~25 s of work on an idle machine, so the signal lands mid-job, never in the
    # interpreter's shutdown after a finished job (where the default SIGINT action kills it: -2)
    np.save(tmp_path / "many.npy", np.repeat(synthetic_images(40), 500, axis=0))
    proc, took = _interrupt_after(["compress", "many.npy", "-o", "ll.evz", "--lossless"], 3.0, signum, tmp_path)
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stderr, stderr
    assert took < 3.0  # ~0.3 s when idle (it was the whole job, ~15-30 s); slack for a loaded CI
    assert sorted(os.listdir(tmp_path)) == ["many.npy"]


def _forged_lossless(codec, count: int, size: int) -> bytes:  # type: ignore[no-untyped-def]
    """A lossless container claiming ``count`` images in a ``size``-byte payload of random chain
    data, with every header field and checksum right (what an attacker can make)."""
    import struct

    from edgevae.runtime import container as fmt
    from edgevae.runtime.bitsback import LATENT_BUCKET_BITS, chain_count

    chains = chain_count(count)
    head = bytes([LATENT_BUCKET_BITS]) + fmt.encode_varint(chains) + struct.pack("<I", 12345)
    head += b"".join(fmt.encode_varint(1) for _ in range(chains - 1))
    payload = head + bytes(np.random.default_rng(1).integers(1, 256, size - len(head), dtype=np.uint8))
    return fmt.pack_lossless(codec.fingerprint, codec.model.image_shape, count, payload)


@pytest.mark.slow
def test_forged_lossless_container_is_refused_after_little_work() -> None:
    """Issue 12 item 9: 409 bytes claiming 3,200 images used to decode all 3,200 (13 ms of CPU per
    byte). Now a chain that keeps popping more than it holds is refused after a few steps."""
    from edgevae.runtime import load
    from edgevae.runtime.bitsback import MAX_CHAINS, MAX_DRY_STEPS
    from edgevae.runtime.codec import Codec
    from edgevae.runtime.errors import ContainerError

    codec = Codec(load(SHIPPED, threads=1))
    decoded = []
    with pytest.raises(ContainerError, match="damaged"):
        codec.decompress(_forged_lossless(codec, 3200, 409), progress=decoded.append)
    assert sum(decoded) <= MAX_DRY_STEPS * MAX_CHAINS  # 256 of 3,200 claimed images, at most


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["black", "white", "noise", "black-then-noise"])
def test_lossless_extremes_still_round_trip(kind: str) -> None:
    """The forged-container check must never refuse a real file: images whose coding pops more
    than a chain holds at some step (all black: bits back from a nearly empty stack) decode."""
    from edgevae.runtime import load
    from edgevae.runtime.codec import Codec, LosslessCodec

    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (70, 1, 28, 28), dtype=np.uint8)
    images = {"black": np.zeros_like(noise), "white": np.full_like(noise, 255), "noise": noise,
              "black-then-noise": np.concatenate([np.zeros_like(noise[:35]), noise[:35]])}[kind]
    for bundle in (SHIPPED, SHIPPED.parent / "fashion-mnist-codec"):
        codec = Codec(load(bundle, threads=1))
        np.testing.assert_array_equal(codec.decompress(LosslessCodec(codec.model).compress(images)), images)


def test_longest_file_names_still_get_temporary_names(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 251 + ".npy")  # 255 bytes, the most a name may have
    outputs.atomic_write_bytes(target, b"one")
    outputs.atomic_write_bytes(target, b"two", force=True)
    assert target.read_bytes() == b"two" and os.listdir(tmp_path) == [target.name]
