"""Shared fixtures: a tiny synthetic image set, a tiny trained run and its exported bundle.

Everything here is made on the fly in a few seconds; nothing is downloaded. The tiny model is
not meant to be good, only real: trained by the same code path, exported by the same exporter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_SHAPE = (1, 28, 28)


def synthetic_images(n: int, seed: int = 0, shape: tuple[int, int, int] = TINY_SHAPE) -> np.ndarray:
    """uint8 (n, C, H, W): bright rectangles of random size and level on a black background."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    out = np.zeros((n, c, h, w), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(2, h // 2, size=2)
        y1, x1 = y0 + rng.integers(6, h // 2), x0 + rng.integers(6, w // 2)
        out[i, :, y0:y1, x0:x1] = rng.integers(80, 256, size=(c, 1, 1))
        out[i] = np.clip(out[i].astype(int) + rng.integers(0, 20, size=(c, h, w)) * (out[i] > 0), 0, 255)
    return out


def write_pngs(images: np.ndarray, folder: Path) -> list[Path]:
    """Save uint8 (N, C, H, W) images as PNG files named 000.png, 001.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:03d}.png"
        mode = "L" if image.shape[0] == 1 else "RGB"
        Image.fromarray(image[0] if mode == "L" else image.transpose(1, 2, 0), mode=mode).save(path)
        paths.append(path)
    return paths


def one_fast(values) -> list:
    """Parameters for ``values``, all but the first marked slow: for cases that each start a real
    process (~1 s of start-up), the fast loop (-m "not slow") runs one and the full suite all."""
    values = list(values)
    return values[:1] + [pytest.param(v, marks=pytest.mark.slow) for v in values[1:]]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 160 synthetic 28x28 gray PNGs in two sub-folders (a training data set)."""
    root = tmp_path_factory.mktemp("images")
    images = synthetic_images(160)
    write_pngs(images[:80], root / "a")
    write_pngs(images[80:], root / "b")
    return root


@pytest.fixture(scope="session")
def tiny_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: a small VAE trained 2 epochs on ``image_folder`` by ``train``."""
    from edgevae.training.data import load_dataset
    from edgevae.training.model import ModelConfig
    from edgevae.training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run") / "tiny"
    data = load_dataset(str(image_folder), TINY_SHAPE)
    model_config = ModelConfig(image_shape=TINY_SHAPE, latent_dim=8, channels=(8, 16, 16), res_blocks=1,
                               mixture_components=3)
    config = TrainConfig(dataset=str(image_folder), epochs=2, batch_size=32, warmup_steps=5, seed=0)
    train(data, model_config, config, run, log=lambda _: None)
    return run


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_run`` evaluated (k=4) and exported: a complete, valid bundle folder."""
    from edgevae.training.evaluate import evaluate_run
    from edgevae.training.export import export_run

    evaluate_run(tiny_run, k=4)
    bundle = tmp_path_factory.mktemp("bundle") / "tiny"
    export_run(tiny_run, bundle)
    return bundle


@pytest.fixture(scope="session")
def float_bundle(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float bundle of a tiny nearest-upsampling model trained one epoch on ``image_folder``: a
    source that `edgevae-train integer` accepts (the integer graphs need nearest resizing)."""
    from edgevae.training.data import load_dataset
    from edgevae.training.export import export_run
    from edgevae.training.model import ModelConfig
    from edgevae.training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("float-run") / "run"
    data = load_dataset(str(image_folder), (1, 28, 28))
    train(data, ModelConfig(latent_dim=4, channels=(4, 8, 8), mixture_components=2, upsample="nearest"),
          TrainConfig(dataset=str(image_folder), epochs=1, batch_size=32, warmup_steps=2, seed=0), run,
          log=lambda _: None)
    bundle = tmp_path_factory.mktemp("float-bundle") / "tiny"
    export_run(run, bundle)
    return bundle


@pytest.fixture(scope="session")
def integer_run(float_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edgevae-train integer` of ``float_bundle``, post-training quantization only (epoch 0)."""
    from click.testing import CliRunner

    from edgevae.training.cli import main

    run = tmp_path_factory.mktemp("integer-run") / "run"
    result = CliRunner().invoke(main, ["integer", str(float_bundle), "--epochs", "0", "--calibration-images", "32",
                                       "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="session")
def context_run(float_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edgevae-train context` of ``float_bundle``: 4 pixel groups, a small context net, one epoch."""
    from click.testing import CliRunner

    from edgevae.training.cli import main

    run = tmp_path_factory.mktemp("context-run") / "run"
    result = CliRunner().invoke(main, ["context", str(float_bundle), "--groups", "4", "--hidden", "4", "--layers", "2",
                                       "--epochs", "1", "--batch-size", "32", "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="session")
def context_bundle(context_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``context_run`` exported by `edgevae-train context-export`."""
    from click.testing import CliRunner

    from edgevae.training.cli import main

    bundle = tmp_path_factory.mktemp("context-bundle") / "ctx"
    result = CliRunner().invoke(main, ["context-export", str(context_run), "-o", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "4 pixel groups" in result.output
    return bundle


@pytest.fixture(scope="session")
def integer_source(integer_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``integer_run`` exported: an integer bundle without groups, of float_bundle's VAE."""
    from click.testing import CliRunner

    from edgevae.training.cli import main

    bundle = tmp_path_factory.mktemp("int-source") / "int"
    result = CliRunner().invoke(main, ["integer-export", str(integer_run), "-o", str(bundle)])
    assert result.exit_code == 0, result.output
    return bundle


@pytest.fixture(scope="session")
def integer_context_run(context_bundle: Path, integer_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edgevae-train integer-context` of ``context_bundle`` on ``integer_source``: calibration and one epoch."""
    from click.testing import CliRunner

    from edgevae.training.cli import main

    run = tmp_path_factory.mktemp("ictx-run") / "run"
    result = CliRunner().invoke(main, ["integer-context", str(context_bundle), "--integer", str(integer_source),
                                       "--epochs", "1", "--batch-size", "32", "--calibration-images", "64",
                                       "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "the integer decoder alone" in result.output
    return run


@pytest.fixture(scope="session")
def tiny_model(tiny_bundle: Path):
    """The runtime model of ``tiny_bundle``."""
    from edgevae.runtime import load

    return load(tiny_bundle)


# --- Shared cases: the same damaged bundles, bad inputs and bad latents drive the library
# --- tests and the CLI tests (appended for tests/test_runtime.py, test_cli.py, test_images_outputs.py).

import json
import os
import shutil

#: Ways to damage a copy of a bundle -> a phrase the resulting BundleError must contain.
BUNDLE_DAMAGE_KINDS = (
    "tampered_encoder", "tampered_decoder", "partial", "no_manifest", "garbled_manifest",
    "future_version", "not_edgevae_manifest", "incomplete_manifest", "unknown_likelihood", "no_folder",
)


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / "model.json").read_text())
    edit(manifest)
    (folder / "model.json").write_text(json.dumps(manifest))


def damage_bundle(kind: str, bundle: Path, folder: Path) -> tuple[Path, str]:
    """Copy ``bundle`` to ``folder / kind``, break it as ``kind`` says; returns (path, phrase)."""
    target = folder / kind
    shutil.copytree(bundle, target)
    if kind == "tampered_encoder":
        _flip_middle_byte(target / "encoder.onnx")
        return target, "sha256 does not match"
    if kind == "tampered_decoder":
        _flip_middle_byte(target / "decoder.onnx")
        return target, "sha256 does not match"
    if kind == "partial":
        (target / "decoder.onnx").unlink()
        return target, "partial"
    if kind == "no_manifest":
        (target / "model.json").unlink()
        return target, "no model.json"
    if kind == "garbled_manifest":
        (target / "model.json").write_text('{"format": "edgevae-bundle", "format_vers')
        return target, "unreadable manifest"
    if kind == "future_version":
        _edit_manifest(target, lambda m: m.update(format_version=99))
        return target, "version 99 is not supported"
    if kind == "not_edgevae_manifest":
        (target / "model.json").write_text("[1, 2, 3]")
        return target, "not an edgevae bundle manifest"
    if kind == "incomplete_manifest":
        _edit_manifest(target, lambda m: m.pop("latent"))
        return target, "incomplete"
    if kind == "unknown_likelihood":
        _edit_manifest(target, lambda m: m["likelihood"].update(kind="bernoulli"))
        return target, "unknown likelihood"
    if kind == "no_folder":
        shutil.rmtree(target)
        return target, "no such model bundle folder"
    raise ValueError(kind)


#: Bad image inputs for a gray 28x28 model -> phrases the InputError must contain.
BAD_INPUT_KINDS = (
    "missing", "not_an_image", "truncated_png", "wrong_size", "wrong_channels", "empty_folder",
    "npy_wrong_shape", "npy_wrong_dtype", "npy_garbage",
)


def make_bad_input(kind: str, folder: Path) -> tuple[Path, tuple[str, ...]]:
    """Create the bad input ``kind`` in ``folder``; returns its path and the expected phrases."""
    folder.mkdir(parents=True, exist_ok=True)
    good = synthetic_images(1, seed=5)
    if kind == "missing":
        return folder / "absent.png", ("absent.png", "no such file")
    if kind == "not_an_image":
        path = folder / "notes.png"
        path.write_text("this is text, not a picture\n")
        return path, ("notes.png", "not a readable image")
    if kind == "truncated_png":
        [full] = write_pngs(good, folder / "full")
        path = folder / "truncated.png"
        path.write_bytes(full.read_bytes()[:60])
        return path, ("truncated.png", "not a readable image")
    if kind == "wrong_size":
        path = folder / "big.png"
        Image.fromarray(synthetic_images(1, seed=6, shape=(1, 32, 40))[0, 0], mode="L").save(path)
        return path, ("big.png", "40x32", "28x28", "--resize")
    if kind == "wrong_channels":
        path = folder / "photo.png"
        Image.fromarray(synthetic_images(1, seed=7, shape=(3, 28, 28))[0].transpose(1, 2, 0), mode="RGB").save(path)
        return path, ("photo.png", "3 channel", "RGB", "--resize")
    if kind == "empty_folder":
        path = folder / "empty"
        path.mkdir()
        (path / "readme.txt").write_text("no images here")
        return path, ("empty", "no images")
    if kind == "npy_wrong_shape":
        path = folder / "small.npy"
        np.save(path, np.zeros((2, 1, 14, 14), np.uint8))
        return path, ("small.npy", "(2, 1, 14, 14)")
    if kind == "npy_wrong_dtype":
        path = folder / "floats.npy"
        np.save(path, good.astype(np.float32) / 255)
        return path, ("floats.npy", "float32", "uint8")
    if kind == "npy_garbage":
        path = folder / "garbage.npy"
        path.write_bytes(b"\x93NUMPY not really")
        return path, ("garbage.npy", "not a valid .npy")
    raise ValueError(kind)


#: Bad latents for a model with latent size D -> phrase the InputError must contain.
BAD_LATENT_KINDS = ("nan", "inf", "minus_inf", "wrong_width", "three_dims", "strings")


def make_bad_latents(kind: str, latent_dim: int) -> tuple[np.ndarray, str]:
    """An array of latents that ``decode`` must refuse, and the phrase its error must contain."""
    z = np.random.default_rng(0).standard_normal((3, latent_dim)).astype(np.float32)
    if kind == "nan":
        z[1, 0] = np.nan
        return z, "NaN or Inf"
    if kind == "inf":
        z[2, -1] = np.inf
        return z, "NaN or Inf"
    if kind == "minus_inf":
        z[0, 0] = -np.inf
        return z, "NaN or Inf"
    if kind == "wrong_width":
        return np.zeros((3, latent_dim + 1), np.float32), f"(N, {latent_dim})"
    if kind == "three_dims":
        return np.zeros((3, 1, latent_dim), np.float32), f"(N, {latent_dim})"
    if kind == "strings":
        return np.array([["a"] * latent_dim]), "floating point"
    raise ValueError(kind)


def is_root() -> bool:
    """True when file permissions do not bind us (root reads chmod-000 files)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def unwritable_dir(tmp_path: Path):
    """A folder nobody may create files in: chmod 555 in tmp, or (as root, whom chmod does not
    stop) a sysfs folder that refuses new files even to root."""
    if not is_root():
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys")
    probe = folder / "edgevae-probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        yield folder
        return
    probe.unlink()
    pytest.skip("running as root and no folder refuses writes to root")
