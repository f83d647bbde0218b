"""Hostile and unlucky input to both CLIs and the API: one line, exit 2, never a traceback.

Images too large to decode, closed or full standard streams, a newline in a file name, API
misuse, usage errors of every command, ONNX Runtime running out of memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import synthetic_images
from edgevae.runtime import load
from edgevae.runtime.cli import MAX_THREADS, main
from edgevae.runtime.errors import InputError
from edgevae.runtime.images import MAX_IMAGE_PIXELS, load_image, load_npy

SHIPPED = Path(__file__).resolve().parent.parent / "exported" / "fashion-mnist"
GRAY = (1, 28, 28)


def run(*args: object, stdin: int | None = None, stdout: int | None = subprocess.PIPE, cwd: Path | None = None,
        prefix: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEVAE_MODEL"}
    return subprocess.run([*(prefix or []), sys.executable, "-m", "edgevae.runtime", *map(str, args)],
                          stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=cwd, timeout=300)


def one_line(stderr: bytes | str, code: int, expected: int = 2, *phrases: str) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert code == expected, text
    assert "Traceback" not in text and "Warning" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def png_header_only(width: int, height: int) -> bytes:
    """A tiny valid PNG claiming ``width`` x ``height`` gray pixels, its data one compressed run of zeros."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    row = b"\0" * (width + 1)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(min(height, 64))) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# -- images: size from the header, before decoding ------------------------------------------------


@pytest.mark.parametrize("side", [20000, 10000])
def test_huge_image_is_refused_from_its_header(side: int, tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        with pytest.raises(InputError, match=f"is {side}x{side} pixels, the model expects 28x28"
                           if side == 10000 else f"claims {side * side:,} pixels, more than the"):
            load_image(path, GRAY)
        with pytest.raises(InputError, match=f"more than the {MAX_IMAGE_PIXELS:,} pixels"):
            load_image(path, GRAY, resize=True)
    proc = run("reconstruct", path, "--resize", "--model", SHIPPED, "-o", tmp_path / "r.png")
    one_line(proc.stderr, proc.returncode, 2, "huge.png", "pixels")
    assert sorted(os.listdir(tmp_path)) == ["huge.png"]


def test_image_is_not_decoded_before_its_size_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(5000, 5000))
    decoded = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real(self))
    with pytest.raises(InputError, match="5000x5000"):
        load_image(path, GRAY)
    assert decoded == []


def test_truncated_npy_is_called_truncated(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", synthetic_images(1000))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        load_npy(tmp_path / "x.npy")
    header = data[:128].replace(b"(1000,", b"(100000000000,")  # a forged shape: no huge allocation
    (tmp_path / "x.npy").write_bytes(header + data[128:])
    with pytest.raises(InputError, match="truncated"):
        load_npy(tmp_path / "x.npy")


# -- standard streams --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shirt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shirt")
    np.save(folder / "one.npy", synthetic_images(1))
    return folder / "one.npy"


@pytest.mark.parametrize("command", ["compress", "score"])
def test_writing_to_a_full_stdout(command: str, shirt: Path) -> None:
    with open("/dev/full", "wb") as full:
        proc = run(command, shirt, "-o", "-", stdout=full.fileno())
    one_line(proc.stderr, proc.returncode, 2, "stdout", "No space left on device")


def test_compress_to_a_closed_pipe(shirt: Path) -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        proc = run("compress", shirt, "-o", "-", stdout=write)
    finally:
        os.close(write)
    one_line(proc.stderr, proc.returncode, 2, "stdout", "Broken pipe")


@pytest.mark.slow
def test_closed_and_empty_stdin(shirt: Path) -> None:
    closed = run("compress", "-", "-o", "-", prefix=["sh", "-c", 'exec "$@" <&-', "sh"])
    one_line(closed.stderr, closed.returncode, 2, "stdin: is closed")
    empty = run("compress", "-", "-o", "x.evz", stdin=subprocess.DEVNULL)
    line = one_line(empty.stderr, empty.returncode, 2, "stdin: is empty")
    assert "/tmp" not in line
    garbage = subprocess.run([sys.executable, "-m", "edgevae.runtime", "compress", "-", "-o", "-"],
                             input=b"not an image", capture_output=True, timeout=120)
    line = one_line(garbage.stderr, garbage.returncode, 2, "stdin: not a readable image")
    decompress = run("decompress", "-", "-o", "x.png", prefix=["sh", "-c", 'exec "$@" <&-', "sh"])
    one_line(decompress.stderr, decompress.returncode, 2, "stdin: is closed")


def test_npy_on_stdin_round_trips(shirt: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgevae.runtime", "compress", "-", "-o", tmp_path / "x.evz"],
                          input=shirt.read_bytes(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# -- names, threads, usage errors ----------------------------------------------------------------


def test_newline_in_a_file_name_stays_one_line(tmp_path: Path) -> None:
    weird = tmp_path / "two\nlines.png"
    weird.write_bytes(b"not a png")
    result = CliRunner().invoke(main, ["reconstruct", str(weird), "--model", str(SHIPPED), "-o", str(tmp_path / "r")])
    line = one_line(result.stderr, result.exit_code, 2, "two\\nlines.png")
    assert "\n" not in line


def test_threads_has_an_upper_bound(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sample", "--threads", "10000", "-o", str(tmp_path / "s.png")])
    one_line(result.stderr, result.exit_code, 2, "--threads", str(MAX_THREADS))
    assert not (tmp_path / "s.png").exists()


def _commands(group):  # type: ignore[no-untyped-def]
    return sorted(group.commands)


@pytest.mark.parametrize("cli", ["edgevae", "edgevae-train"])
def test_usage_errors_are_one_line_for_every_command(cli: str) -> None:
    """README: every error is one line with exit code 2 -- usage errors included (click prints
    four lines: usage, hint, a blank line, the error)."""
    if cli == "edgevae":
        group = main
    else:
        from edgevae.training.cli import main as group
    runner = CliRunner()
    cases = [["--no-such-option"], ["no-such-command"]]
    cases += [[name, "--no-such-option"] for name in _commands(group)]
    cases += [[name] for name, command in group.commands.items()
              if any(p.required for p in command.params)]  # a missing argument or option
    for args in cases:
        result = runner.invoke(group, args, prog_name=cli)
        one_line(result.stderr, result.exit_code, 2, f"Try '{cli}")
    result = runner.invoke(main, ["sample", "-n", "many", "-o", "x.png"], prog_name="edgevae")
    one_line(result.stderr, result.exit_code, 2, "'-n'", "'many'")


# -- the API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load(SHIPPED, threads=1)


@pytest.mark.parametrize("call, phrase", [
    (lambda m: m.sample(2.5), "number of samples must be an integer"),
    (lambda m: m.sample("3"), "number of samples must be an integer"),
    (lambda m: m.sample(True), "number of samples must be an integer"),
    (lambda m: m.sample(2, seed="x"), "seed must be an integer"),
    (lambda m: m.sample(2, seed=1.5), "seed must be an integer"),
    (lambda m: m.sample(2, temperature="hot"), "temperature must be a finite number"),
    (lambda m: m.sample(2, temperature=float("inf")), "temperature must be a finite number"),
    (lambda m: m.interpolate(np.zeros(GRAY, np.uint8), np.zeros(GRAY, np.uint8), 2.5), "must be an integer"),
    (lambda m: m.decode([[0.0] * 32, [0.0]]), "latents must be an array"),
    (lambda m: m.encode([[["x"]]]), "images must"),
])
def test_api_misuse_raises_input_error(call, phrase: str, model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=phrase):
        call(model)


@pytest.mark.parametrize("indices", [[1.7], ["1"], [True], [np.float64(1.0)]])
def test_decompress_indices_must_be_integers(indices: list[object], model) -> None:  # type: ignore[no-untyped-def]
    from edgevae.runtime.codec import Codec, LosslessCodec

    codec = Codec(model)
    data = LosslessCodec(codec.model).compress(synthetic_images(3))
    with pytest.raises(InputError, match="image index must be an integer"):
        codec.decompress(data, indices=indices)
    np.testing.assert_array_equal(codec.decompress(data, indices=[np.int64(1)]), synthetic_images(3)[1:2])


# -- ONNX Runtime out of memory ------------------------------------------------------------------------


def test_onnx_runtime_out_of_memory_is_one_line(tmp_path: Path) -> None:
    """Under a 700 MB address-space limit the decoder's 200 MB activations of a 1,024-image chunk
    cannot be allocated: ONNX Runtime's failure becomes the out-of-memory line."""
    proc = run("sample", "-n", 5000, "--seed", 0, "--threads", 1, "--model", SHIPPED, "-o", tmp_path / "s.npy",
               prefix=["prlimit", f"--as={700 << 20}"])
    one_line(proc.stderr, proc.returncode, 2, "out of memory")
    assert not (tmp_path / "s.npy").exists()
