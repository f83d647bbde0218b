"""The ``edgevae`` CLI, driven both in-process (click's CliRunner) and as real subprocesses.

The library's own test cases (damaged bundles, bad inputs, bad latents from conftest) are
replayed here through every command that can meet them: each must end with exactly one
``Error: ...`` line on stderr, exit code 2, no traceback and no file left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import edgevae.runtime as ev
from conftest import (
    BAD_INPUT_KINDS,
    BAD_LATENT_KINDS,
    BUNDLE_DAMAGE_KINDS,
    damage_bundle,
    is_root,
    make_bad_input,
    make_bad_latents,
    one_fast,
    synthetic_images,
    write_pngs,
)
from edgevae.runtime.cli import main
from edgevae.runtime.images import GRID_PADDING, grid, read_images

COMMANDS = ("info", "sample", "reconstruct", "interpolate", "encode", "decode")
#: In-process (CliRunner) and a real process; the real process costs ~1 s of start-up per call: slow.
MODES = ("runner", pytest.param("subprocess", marks=pytest.mark.slow))


@dataclass
class Outcome:
    """What a CLI call did."""

    code: int
    stdout: str
    stderr: str


def edgevae(mode: str, *args: object, env: dict[str, str] | None = None) -> Outcome:
    """Run ``edgevae ARGS`` in-process (``runner``) or as ``python -m edgevae.runtime`` (``subprocess``)."""
    argv = [str(a) for a in args]
    if mode == "runner":
        result = CliRunner().invoke(main, argv, env={"EDGEVAE_MODEL": None, **(env or {})})
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += f"Traceback (uncaught in runner): {result.exception!r}"
        return Outcome(result.exit_code, result.stdout, stderr)
    full_env = {k: v for k, v in os.environ.items() if k != "EDGEVAE_MODEL"}
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "edgevae.runtime", *argv], capture_output=True, text=True,
                          env=full_env, timeout=300)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def files_under(folder: Path) -> list[str]:
    """Every entry under ``folder`` (hidden temp files included), relative and sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def assert_clean_error(outcome: Outcome, *phrases: str) -> str:
    """Exit 2, one ``Error:`` line on stderr containing ``phrases``, nothing else; returns the line."""
    assert outcome.code == 2, outcome
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome
    assert lines[0].startswith("Error: "), outcome
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert outcome.stdout == "", outcome
    return lines[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good inputs: six PNGs in a folder tree, two single PNGs, a .npy batch of three."""
    root = tmp_path_factory.mktemp("cli-inputs")
    images = synthetic_images(11, seed=42)
    write_pngs(images[:3], root / "tree" / "x")
    write_pngs(images[3:6], root / "tree" / "y")
    [a] = write_pngs(images[6:7], root / "a")
    [b] = write_pngs(images[7:8], root / "b")
    np.save(root / "batch.npy", images[8:11])
    return {"root": root, "tree": root / "tree", "a": a, "b": b, "npy": root / "batch.npy"}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty output folder; tests assert it holds exactly what the command promised."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def ev_read(model: ev.EdgeVAE, paths: list[Path]) -> tuple[np.ndarray, list[str]]:
    """The images (and names) the CLI should have read from ``paths``, read by the library."""
    return read_images(paths, model.image_shape)


# -- help, version, info ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_help_lists_every_command(mode: str) -> None:
    outcome = edgevae(mode, "--help")
    assert outcome.code == 0 and outcome.stderr == ""
    for command in COMMANDS:
        assert f"  {command} " in outcome.stdout
    version = edgevae(mode, "--version")
    from importlib.metadata import version as installed_version

    assert version.code == 0 and installed_version("edgevae") in version.stdout


def test_help_does_not_load_onnx_runtime() -> None:
    """Heavy imports happen inside commands, so ``edgevae --help`` starts instantly."""
    code = ("import sys\nfrom edgevae.runtime.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED' if 'onnxruntime' in sys.modules else 'NOT LOADED')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NOT LOADED")


def test_console_script(tiny_bundle: Path) -> None:
    script = Path(sys.executable).parent / "edgevae"
    proc = subprocess.run([str(script), "info", "--model", str(tiny_bundle)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "latent      8 dimensions" in proc.stdout


@pytest.mark.parametrize("mode", MODES)
def test_info(mode: str, tiny_bundle: Path) -> None:
    text = edgevae(mode, "info", "--model", tiny_bundle)
    assert text.code == 0, text
    assert "1x28x28" in text.stdout and "8 dimensions" in text.stdout and "3 components" in text.stdout
    assert "edgevae-train train" in text.stdout and "IWAE(k=4)" in text.stdout
    as_json = edgevae(mode, "info", "--model", tiny_bundle, "--json")
    assert as_json.code == 0
    manifest = json.loads(as_json.stdout)
    assert manifest["path"] == str(tiny_bundle)
    assert manifest["format_version"] == 1 and manifest["latent"]["dim"] == 8


def test_model_from_environment(tiny_bundle: Path) -> None:
    outcome = edgevae("runner", "info", "--json", env={"EDGEVAE_MODEL": str(tiny_bundle)})
    assert outcome.code == 0 and json.loads(outcome.stdout)["path"] == str(tiny_bundle)


# -- sample -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_sample_outputs_match_the_library(mode: str, tiny_bundle: Path, tiny_model: ev.EdgeVAE, out: Path) -> None:
    want = tiny_model.sample(5, seed=7)
    base = ("sample", "-n", 5, "--seed", 7, "--model", tiny_bundle)
    assert edgevae(mode, *base, "-o", out / "s.npy").code == 0
    np.testing.assert_array_equal(np.load(out / "s.npy"), want)
    assert edgevae(mode, *base, "-o", out / "s.png").code == 0
    picture = read_png(out / "s.png")
    assert picture.shape == (2 * (28 + GRID_PADDING) + GRID_PADDING, 3 * (28 + GRID_PADDING) + GRID_PADDING)
    np.testing.assert_array_equal(picture, grid(want)[0])
    assert edgevae(mode, *base, "-o", out / "tiles").code == 0
    assert files_under(out / "tiles") == [f"{i:04d}.png" for i in range(5)]
    for i in range(5):
        np.testing.assert_array_equal(read_png(out / "tiles" / f"{i:04d}.png"), want[i, 0])
    assert files_under(out) == ["s.npy", "s.png", "tiles"] + [f"tiles/{i:04d}.png" for i in range(5)]


@pytest.mark.parametrize("count", [1, 5])
def test_dash_writes_one_png_to_stdout(count: int, tiny_bundle: Path, tiny_model: ev.EdgeVAE, out: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``-o -`` is the PNG on stdout (the image itself, or a grid of several) and the summary on
    stderr, for every command that writes images; never a folder named '-'."""
    import io

    monkeypatch.chdir(out)
    want = tiny_model.sample(count, seed=3)
    np.save(out / "z.npy", tiny_model.encode(want)[0])
    cases = {
        "sample": (["sample", "-n", count, "--seed", 3], want),
        "decode": (["decode", out / "z.npy"], tiny_model.decode(tiny_model.encode(want)[0])),
    }
    for name, (args, images) in cases.items():
        result = CliRunner().invoke(main, [str(a) for a in args] + ["--model", str(tiny_bundle), "-o", "-"],
                                    env={"EDGEVAE_MODEL": None})
        assert result.exit_code == 0, (name, result.stderr)
        picture = np.asarray(Image.open(io.BytesIO(result.stdout_bytes)))
        np.testing.assert_array_equal(picture, images[0, 0] if count == 1 else grid(images)[0])
        assert result.stderr.count("\n") == 1 and result.stderr.rstrip().endswith("stdout"), result.stderr
    assert not (out / "-").exists()


def test_same_seed_gives_byte_identical_files(tiny_bundle: Path, out: Path) -> None:
    """In-process and subprocess runs, one seed: the very same bytes; another seed: other bytes."""
    for mode, name in (("runner", "a.png"), ("subprocess", "b.png"), ("runner", "c.png")):
        assert edgevae(mode, "sample", "-n", 9, "--seed", 11, "--model", tiny_bundle, "-o", out / name).code == 0
    assert edgevae("runner", "sample", "-n", 9, "--seed", 12, "--model", tiny_bundle, "-o", out / "d.png").code == 0
    a = (out / "a.png").read_bytes()
    assert a == (out / "b.png").read_bytes() == (out / "c.png").read_bytes()
    assert a != (out / "d.png").read_bytes()


def test_sample_json_reports_the_seed_that_reproduces_it(tiny_bundle: Path, out: Path) -> None:
    first = edgevae("runner", "sample", "-n", 4, "--model", tiny_bundle, "-o", out / "a.npy", "--json")
    assert first.code == 0
    summary = json.loads(first.stdout)
    assert summary["command"] == "sample" and summary["count"] == 4 and summary["temperature"] == 1.0
    assert summary["outputs"] == [str(out / "a.npy")]
    again = edgevae("runner", "sample", "-n", 4, "--seed", summary["seed"], "--model", tiny_bundle,
                    "-o", out / "b.npy")
    assert again.code == 0
    assert (out / "a.npy").read_bytes() == (out / "b.npy").read_bytes()


def test_sample_temperature_zero(tiny_bundle: Path, out: Path) -> None:
    result = edgevae("runner", "sample", "-n", 3, "--temperature", 0, "--seed", 1, "--model", tiny_bundle,
                     "-o", out / "t.npy")
    assert result.code == 0
    images = np.load(out / "t.npy")
    assert (images == images[0]).all()


@pytest.mark.parametrize("args", [("-n", 0), ("-n", "many"), ("--temperature", -1), ()])
def test_sample_usage_errors(args: tuple, tiny_bundle: Path, out: Path) -> None:
    target = () if args == () else ("-o", out / "s.png")
    outcome = edgevae("runner", "sample", *args, *target, "--model", tiny_bundle)
    assert_clean_error(outcome, "sample --help")  # one line, as README promises
    assert files_under(out) == []


def test_negative_seed_is_a_usage_error(tiny_bundle: Path, out: Path) -> None:
    outcome = edgevae("runner", "sample", "-n", 2, "--seed", -1, "--model", tiny_bundle, "-o", out / "s.png")
    assert_clean_error(outcome, "--seed")
    assert files_under(out) == []


# -- reconstruct, encode, decode, interpolate ---------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_reconstruct(mode: str, tiny_bundle: Path, tiny_model: ev.EdgeVAE, inputs: dict[str, Path],
                     out: Path) -> None:
    outcome = edgevae(mode, "reconstruct", inputs["a"], inputs["tree"], inputs["npy"], "--model", tiny_bundle,
                      "-o", out / "r.npy", "--json")
    assert outcome.code == 0, outcome
    images, names = ev_read(tiny_model, [inputs["a"], inputs["tree"], inputs["npy"]])
    recon = np.load(out / "r.npy")
    np.testing.assert_array_equal(recon, tiny_model.reconstruct(images))
    summary = json.loads(outcome.stdout)
    assert summary["count"] == 10 and summary["outputs"] == [str(out / "r.npy")]
    mse = ((images.astype(float) - recon) ** 2).reshape(10, -1).mean(1)
    assert summary["mean_psnr_db"] == pytest.approx(np.mean(10 * np.log10(255**2 / mse)), rel=1e-9)
    folder = edgevae(mode, "reconstruct", inputs["a"], inputs["tree"], inputs["npy"], "--model", tiny_bundle,
                     "-o", out / "r")
    assert folder.code == 0 and "mean PSNR" in folder.stdout
    assert files_under(out / "r") == sorted(f"{name}.png" for name in names)
    np.testing.assert_array_equal(read_png(out / "r" / "x_001.png"), recon[2, 0])


@pytest.mark.parametrize("mode", MODES)
def test_encode_then_decode(mode: str, tiny_bundle: Path, tiny_model: ev.EdgeVAE, inputs: dict[str, Path],
                            out: Path) -> None:
    encoded = edgevae(mode, "encode", inputs["tree"], "--model", tiny_bundle, "-o", out / "z.npy",
                      "--logvar", out / "lv.npy", "--json")
    assert encoded.code == 0, encoded
    images, names = ev_read(tiny_model, [inputs["tree"]])
    mean, logvar = tiny_model.encode(images)
    np.testing.assert_array_equal(np.load(out / "z.npy"), mean)
    np.testing.assert_array_equal(np.load(out / "lv.npy"), logvar)
    summary = json.loads(encoded.stdout)
    assert summary["names"] == names and summary["latent_dim"] == 8 and summary["count"] == 6
    decoded = edgevae(mode, "decode", out / "z.npy", "--model", tiny_bundle, "-o", out / "d.npy", "--json")
    assert decoded.code == 0, decoded
    assert json.loads(decoded.stdout)["count"] == 6
    np.testing.assert_array_equal(np.load(out / "d.npy"), tiny_model.reconstruct(images))
    np.save(out / "one.npy", mean[2].astype(np.float64))  # one (D,) vector, any float type
    assert edgevae(mode, "decode", out / "one.npy", "--model", tiny_bundle, "-o", out / "one.png").code == 0
    np.testing.assert_array_equal(read_png(out / "one.png"), tiny_model.decode(mean[2])[0, 0])  # the image, no grid


def test_encode_output_must_be_npy(tiny_bundle: Path, inputs: dict[str, Path], out: Path) -> None:
    for target in ("-o", out / "z.png"), ("-o", out / "z.npy", "--logvar", out / "lv.txt"):
        assert_clean_error(edgevae("runner", "encode", inputs["a"], "--model", tiny_bundle, *target), ".npy")
    assert files_under(out) == []


@pytest.mark.parametrize("mode", MODES)
def test_interpolate(mode: str, tiny_bundle: Path, tiny_model: ev.EdgeVAE, inputs: dict[str, Path],
                     out: Path) -> None:
    outcome = edgevae(mode, "interpolate", inputs["a"], inputs["b"], "--steps", 5, "--model", tiny_bundle,
                      "-o", out / "i.npy", "--json")
    assert outcome.code == 0, outcome
    assert json.loads(outcome.stdout) == {"command": "interpolate", "count": 5, "outputs": [str(out / "i.npy")]}
    got = np.load(out / "i.npy")
    a, _ = ev_read(tiny_model, [inputs["a"]])
    b, _ = ev_read(tiny_model, [inputs["b"]])
    np.testing.assert_array_equal(got, tiny_model.interpolate(a[0], b[0], steps=5))
    assert edgevae(mode, "interpolate", inputs["a"], inputs["b"], "--model", tiny_bundle, "-o", out / "i.png").code == 0
    assert read_png(out / "i.png").shape == (3 * 30 + 2, 3 * 30 + 2)  # 8 steps by default: a 3x3 grid


def test_interpolate_needs_one_image_per_end(tiny_bundle: Path, inputs: dict[str, Path], out: Path) -> None:
    outcome = edgevae("runner", "interpolate", inputs["tree"], inputs["b"], "--model", tiny_bundle,
                      "-o", out / "i.png")
    assert_clean_error(outcome, "holds 6 images", "exactly one")
    assert files_under(out) == []


# -- error paths --------------------------------------------------------------------------------


def input_command(command: str, bad: Path, good: Path, bundle: Path, out: Path) -> list[object]:
    """Arguments that feed ``bad`` to ``command`` (the other end of an interpolation is ``good``)."""
    if command == "interpolate":
        return ["interpolate", good, bad, "--model", bundle, "-o", out / "i.png"]
    target = out / ("z.npy" if command == "encode" else "r")
    return [command, good, bad, "--model", bundle, "-o", target]


@pytest.mark.parametrize("command", ["reconstruct", "encode", "interpolate"])
@pytest.mark.parametrize("kind", BAD_INPUT_KINDS)
def test_bad_inputs(kind: str, command: str, tiny_bundle: Path, inputs: dict[str, Path], tmp_path: Path,
                    out: Path) -> None:
    bad, phrases = make_bad_input(kind, tmp_path / "bad")
    outcome = edgevae("runner", *input_command(command, bad, inputs["a"], tiny_bundle, out))
    assert_clean_error(outcome, *phrases)
    assert files_under(out) == []


@pytest.mark.parametrize("kind", one_fast(BAD_INPUT_KINDS))
def test_bad_inputs_in_a_real_process(kind: str, tiny_bundle: Path, inputs: dict[str, Path], tmp_path: Path,
                                      out: Path) -> None:
    bad, phrases = make_bad_input(kind, tmp_path / "bad")
    outcome = edgevae("subprocess", *input_command("reconstruct", bad, inputs["a"], tiny_bundle, out))
    assert_clean_error(outcome, *phrases)
    assert files_under(out) == []


@pytest.mark.parametrize("command", ["reconstruct", "encode", "interpolate"])
@pytest.mark.parametrize("kind", ["wrong_size", "wrong_channels"])
def test_resize_fixes_shape_errors(kind: str, command: str, tiny_bundle: Path, inputs: dict[str, Path],
                                   tmp_path: Path, out: Path) -> None:
    bad, _ = make_bad_input(kind, tmp_path / "bad")
    outcome = edgevae("runner", *input_command(command, bad, inputs["a"], tiny_bundle, out), "--resize")
    assert outcome.code == 0, outcome
    assert files_under(out) != []


@pytest.mark.parametrize("mode", MODES)
def test_unreadable_input(mode: str, tiny_bundle: Path, inputs: dict[str, Path], tmp_path: Path, out: Path) -> None:
    [locked] = write_pngs(synthetic_images(1, seed=3), tmp_path / "locked")
    locked.chmod(0)
    try:
        outcome = edgevae(mode, "encode", locked, "--model", tiny_bundle, "-o", out / "z.npy")
    finally:
        locked.chmod(0o644)
    if is_root():
        # chmod 000 does not stop root from reading: the command must then simply work.
        assert outcome.code == 0, outcome
        assert np.load(out / "z.npy").shape == (1, 8)
    else:
        assert_clean_error(outcome, "000.png", "permission denied")
        assert files_under(out) == []


@pytest.mark.parametrize("kind", BAD_LATENT_KINDS)
def test_bad_latents(kind: str, tiny_bundle: Path, tmp_path: Path, out: Path) -> None:
    latents, phrase = make_bad_latents(kind, 8)
    np.save(tmp_path / "z.npy", latents)
    assert_clean_error(edgevae("runner", "decode", tmp_path / "z.npy", "--model", tiny_bundle, "-o", out / "d"),
                       phrase)
    assert files_under(out) == []


@pytest.mark.parametrize("kind", one_fast(["nan", "wrong_width"]))
def test_bad_latents_in_a_real_process(kind: str, tiny_bundle: Path, tmp_path: Path, out: Path) -> None:
    latents, phrase = make_bad_latents(kind, 8)
    np.save(tmp_path / "z.npy", latents)
    outcome = edgevae("subprocess", "decode", tmp_path / "z.npy", "--model", tiny_bundle, "-o", out / "d.png")
    assert_clean_error(outcome, phrase)
    assert files_under(out) == []


@pytest.mark.parametrize("kind", ["missing", "not_an_image", "npy_garbage"])
def test_decode_refuses_files_that_are_not_latents(kind: str, tiny_bundle: Path, tmp_path: Path, out: Path) -> None:
    bad, phrases = make_bad_input(kind, tmp_path / "bad")
    phrase = "no such file" if kind == "missing" else "not a valid .npy"
    assert_clean_error(edgevae("runner", "decode", bad, "--model", tiny_bundle, "-o", out / "d.png"),
                       bad.name, phrase)
    assert files_under(out) == []


@pytest.mark.parametrize("command", ["reconstruct", "encode", "interpolate"])
@pytest.mark.parametrize("target", ["r", "r.npy"])
def test_empty_image_array_is_refused(command: str, target: str, tiny_bundle: Path, inputs: dict[str, Path],
                                      tmp_path: Path, out: Path) -> None:
    empty = tmp_path / "none.npy"
    np.save(empty, np.zeros((0, 1, 28, 28), np.uint8))
    sources = [inputs["a"], empty] if command == "interpolate" else [empty]
    outcome = edgevae("runner", command, *sources, "--model", tiny_bundle, "-o",
                      out / ("z.npy" if command == "encode" else target))
    assert_clean_error(outcome, "none.npy", "no images")
    assert files_under(out) == []


def test_decode_of_zero_latents(tiny_bundle: Path, tmp_path: Path, out: Path) -> None:
    """An empty array of latents decodes to an empty .npy array; a grid or a folder of no images
    is refused without creating anything."""
    np.save(tmp_path / "none.npy", np.zeros((0, 8), np.float32))
    outcome = edgevae("runner", "decode", tmp_path / "none.npy", "--model", tiny_bundle, "-o", out / "d.npy")
    assert outcome.code == 0, outcome
    assert "decoded 0 latent(s)" in outcome.stdout
    assert files_under(out) == ["d.npy"]
    for target in ("d.png", "d", "new/d"):
        assert_clean_error(edgevae("runner", "decode", tmp_path / "none.npy", "--model", tiny_bundle,
                                   "-o", out / target), "no images")
    assert files_under(out) == ["d.npy"]


def command_args(command: str, bundle: Path, inputs: dict[str, Path], out: Path, latents: Path) -> list[object]:
    """A valid call of ``command`` writing into ``out`` (a grid, or .npy for encode)."""
    return {
        "info": ["info"],
        "sample": ["sample", "-n", 2, "--seed", 0, "-o", out / "o.png"],
        "reconstruct": ["reconstruct", inputs["a"], "-o", out / "o.png"],
        "interpolate": ["interpolate", inputs["a"], inputs["b"], "-o", out / "o.png"],
        "encode": ["encode", inputs["a"], "-o", out / "o.npy"],
        "decode": ["decode", latents, "-o", out / "o.png"],
    }[command] + ["--model", bundle]


@pytest.fixture(scope="module")
def latents_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("latents") / "z.npy"
    np.save(path, np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32))
    return path


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", BUNDLE_DAMAGE_KINDS)
def test_damaged_bundle(kind: str, command: str, tiny_bundle: Path, inputs: dict[str, Path], latents_file: Path,
                        tmp_path: Path, out: Path) -> None:
    bundle, phrase = damage_bundle(kind, tiny_bundle, tmp_path)
    outcome = edgevae("runner", *command_args(command, bundle, inputs, out, latents_file))
    assert_clean_error(outcome, phrase)
    assert files_under(out) == []


@pytest.mark.parametrize("kind", one_fast(["tampered_decoder", "partial", "future_version"]))
def test_damaged_bundle_in_a_real_process(kind: str, tiny_bundle: Path, inputs: dict[str, Path],
                                          latents_file: Path, tmp_path: Path, out: Path) -> None:
    bundle, phrase = damage_bundle(kind, tiny_bundle, tmp_path)
    outcome = edgevae("subprocess", *command_args("sample", bundle, inputs, out, latents_file))
    assert_clean_error(outcome, phrase)
    assert files_under(out) == []


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "info"])
def test_existing_output_needs_force(command: str, tiny_bundle: Path, inputs: dict[str, Path], latents_file: Path,
                                     out: Path) -> None:
    args = command_args(command, tiny_bundle, inputs, out, latents_file)
    target = out / ("o.npy" if command == "encode" else "o.png")
    target.write_bytes(b"precious")
    assert_clean_error(edgevae("runner", *args), str(target), "already exists", "--force")
    assert target.read_bytes() == b"precious"
    assert files_under(out) == [target.name]
    assert edgevae("runner", *args, "--force").code == 0
    assert target.read_bytes() != b"precious"
    assert files_under(out) == [target.name]


def test_existing_output_needs_force_in_a_real_process(tiny_bundle: Path, out: Path) -> None:
    (out / "s").mkdir()
    (out / "s" / "0001.png").write_bytes(b"precious")
    outcome = edgevae("subprocess", "sample", "-n", 3, "--model", tiny_bundle, "-o", out / "s")
    assert_clean_error(outcome, "0001.png", "already exists")
    assert files_under(out) == ["s", "s/0001.png"]  # all or nothing: 0000.png was not written either


def test_encode_writes_both_arrays_or_neither(tiny_bundle: Path, inputs: dict[str, Path], out: Path) -> None:
    (out / "lv.npy").write_bytes(b"precious")
    outcome = edgevae("runner", "encode", inputs["a"], "--model", tiny_bundle, "-o", out / "z.npy",
                      "--logvar", out / "lv.npy")
    assert_clean_error(outcome, "lv.npy", "already exists")
    assert files_under(out) == ["lv.npy"]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "info"])
def test_unwritable_output(command: str, tiny_bundle: Path, inputs: dict[str, Path], latents_file: Path,
                           unwritable_dir: Path) -> None:
    before = sorted(os.listdir(unwritable_dir))
    outcome = edgevae("runner", *command_args(command, tiny_bundle, inputs, unwritable_dir, latents_file))
    assert_clean_error(outcome, str(unwritable_dir))
    assert sorted(os.listdir(unwritable_dir)) == before


@pytest.mark.parametrize("target", one_fast(["edgevae-test.png", "edgevae-test-folder"]))
def test_unwritable_output_in_a_real_process(target: str, tiny_bundle: Path, unwritable_dir: Path) -> None:
    outcome = edgevae("subprocess", "sample", "-n", 2, "--model", tiny_bundle, "-o", unwritable_dir / target)
    assert_clean_error(outcome, str(unwritable_dir))
    assert not (unwritable_dir / target).exists()


@pytest.mark.parametrize("command, default", [
    ("sample", "else fashion-mnist."),
    ("denoise", "else fashion-mnist-denoise "),
    ("compress", "else fashion-mnist-codec (lossy) or fashion-mnist (--lossless)."),
    ("decompress", "else the shipped bundle that made each container"),
])
def test_model_help_lists_the_shipped_bundles_and_the_commands_default(command: str, default: str) -> None:
    import click

    from edgevae.runtime.bundle import shipped_bundles

    cmd = main.commands[command]
    option = next(p for p in cmd.params if p.name == "model_path")
    text = option.get_help_record(click.Context(cmd))[1]
    assert f"({', '.join(shipped_bundles())})" in text and len(shipped_bundles()) >= 5
    assert f"Default: $EDGEVAE_MODEL, {default}" in text, text
