"""Lossless and near-lossless coding of integer bundles (exact table set, container version 3), and
float bundles unchanged.

The integer bundle here is tests/test_exact_bundle.py's wrapped fashion-mnist (the float network
behind the integer contract), so exact and float tables can be compared on the same network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgevae.runtime import bitsback
from edgevae.runtime import container as fmt
from edgevae.runtime.codec import LosslessCodec, NearLosslessCodec
from edgevae.runtime.errors import ContainerError
from edgevae.runtime.model import load
from test_exact_bundle import FLOAT_BUNDLE, integer_bundle  # noqa: F401 (a fixture)
from test_integer_training import float_bundle  # noqa: F401 (a fixture: a tiny trained float bundle)

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "tests" / "fixtures" / "release-0.2.0"


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    """Fashion-MNIST-like test inputs: the release fixtures' inputs (real photos of clothes)."""
    with np.load(RELEASE / "pixels.npz") as pixels:
        inputs = pixels["inputs"]
    reps = -(-n // len(inputs))
    return np.concatenate([inputs] * reps)[:n]


@pytest.fixture(scope="module")
def model(integer_bundle: Path):  # noqa: F811
    return load(integer_bundle, threads=1)


def test_lossless_round_trip_is_exact_and_version_3(model) -> None:
    images = _images(40)
    codec = LosslessCodec(model)
    data = codec.compress(images)
    assert data[1] >> fmt.VERSION_SHIFT == fmt.EXACT_VERSION
    assert np.array_equal(codec.decompress(data), images)
    assert codec.compress(images) == data  # deterministic
    one = codec.compress(images[:1])
    assert np.array_equal(codec.decompress(one), images[:1])


def test_the_exact_set_costs_about_what_the_float_set_does(model) -> None:
    images = _images(64)
    exact = bitsback.encode(model, images)
    float_ = bitsback.encode(load(FLOAT_BUNDLE, threads=1), images)
    assert len(exact.payload) < 1.01 * len(float_.payload)


@pytest.mark.parametrize("k", [1, 4, 32])
def test_near_lossless_round_trips_within_k(model, k: int) -> None:
    images = _images(12)
    codec = NearLosslessCodec(model, k)
    many = codec.compress(images)
    assert many[1] >> fmt.VERSION_SHIFT == fmt.EXACT_VERSION
    out = codec.decompress(many)
    assert np.abs(out.astype(int) - images).max() <= k
    single = codec.compress_each(images[:2])
    for data, image in zip(single, images[:2]):
        # no codec.json in this bundle: a one-image bits-back payload (level nibble 0)
        assert data[1] >> fmt.VERSION_SHIFT == fmt.EXACT_VERSION and data[2] >> 4 == 0
        assert np.abs(codec.decompress(data)[0].astype(int) - image).max() <= k


def test_exact_reconstruction_is_integer_and_near_the_float_one(model) -> None:
    from edgevae.runtime.nearlossless import reconstruct

    images = _images(4)
    t = bitsback.tables(16, True)
    mix = model.likelihood_indices(t.centers[np.full((4, 32), 32768)])
    bins = bitsback.binning(4)
    symbols = bins.of_level[images.reshape(4, -1)]
    lo, hi = bins.starts[symbols], bins.ends[symbols]
    exact = reconstruct(lo, hi, 4, mix)
    float_ = reconstruct(lo, hi, 4, mix.params())
    assert exact.dtype == np.uint8 and np.abs(exact.astype(int) - images).max() <= 4
    assert np.mean(np.abs(exact.astype(int) - float_.astype(int)) <= 1) > 0.97


def test_single_images_with_codec_tables_use_the_integer_decoder(model, tmp_path: Path) -> None:
    """encode_known/decode_known take the integer decoder's indices (exact tables)."""
    images = _images(2)
    t = bitsback.tables(16, True)
    mix = model.likelihood_indices(t.centers[np.full((2, 32), 32768)])
    streams = bitsback.encode_known(mix, images, 4)
    lo, hi = bitsback.decode_known(mix, streams, 4)
    flat = images.reshape(2, -1).astype(int)
    assert np.all((lo <= flat) & (flat <= hi)) and np.all(hi - lo <= 8)


def test_version_and_bundle_must_agree(model) -> None:
    images = _images(3)
    exact = LosslessCodec(model).compress(images)
    # a version-1 header on an exact payload (CRC recomputed): the codec names the mismatch
    forged = exact[:1] + bytes([fmt.VERSION << 4 | exact[1] & 0x0F]) + exact[2:-4]
    forged += fmt.checksum(forged, model.bundle.fingerprint, model.image_shape).to_bytes(4, "big")
    with pytest.raises(ContainerError, match="made by a float bundle"):
        LosslessCodec(model).decompress(forged)
    newer = exact[:1] + bytes([4 << 4 | exact[1] & 0x0F]) + exact[2:]
    with pytest.raises(ContainerError, match="version 4 is newer than this edgevae supports \\(3\\)"):
        LosslessCodec(model).decompress(newer)


def test_float_bundles_write_the_bytes_they_always_wrote() -> None:
    """The release fixtures' inputs give byte-identical lossless and near-lossless containers."""
    entries = {e["file"]: e for e in json.loads((RELEASE / "manifest.json").read_text())["containers"]}
    with np.load(RELEASE / "pixels.npz") as pixels:
        inputs = pixels["inputs"]
    codec_model = load(ROOT / "exported" / entries["fashion-mnist-codec-lossless.evz"]["bundle"], threads=1)
    want = (RELEASE / "fashion-mnist-codec-lossless.evz").read_bytes()
    count = entries["fashion-mnist-codec-lossless.evz"]["count"]
    assert LosslessCodec(codec_model).compress(inputs[:count]) == want
    name = "fashion-mnist-codec-k4.evz"
    if name in entries:
        want = (RELEASE / name).read_bytes()
        got = NearLosslessCodec(codec_model, 4).compress(inputs[: entries[name]["count"]])
        assert got == want


@pytest.mark.slow
def test_many_images_round_trip_on_both_lanes(model) -> None:
    images = _images(300, seed=1)
    rng = np.random.default_rng(5)
    images = np.where(rng.random(images.shape) < 0.02, 255 - images, images).astype(np.uint8)
    codec = LosslessCodec(model)
    assert np.array_equal(codec.decompress(codec.compress(images)), images)
    near = NearLosslessCodec(model, 2)
    assert np.abs(near.decompress(near.compress(images)).astype(int) - images).max() <= 2


@pytest.mark.slow
def test_a_trained_integer_bundle_codes_every_mode(float_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """training/integer.py's export (true integer graphs, with codec.json) through every runtime mode:
    lossless and near-lossless (multi, and single images on a quantized latent) are version 3, lossy
    is version 1, and everything decodes."""
    from click.testing import CliRunner

    from edgevae.runtime.codec import Codec
    from edgevae.training.cli import main

    run, bundle = tmp_path / "run", tmp_path / "exact"
    result = CliRunner().invoke(main, ["integer", str(float_bundle), "--epochs", "1", "--batch-size", "32",
                                       "--calibration-images", "64", "--out", str(run)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["integer-export", str(run), "-o", str(bundle)])
    assert result.exit_code == 0, result.output
    model = load(bundle, threads=1)
    assert model.integer
    from conftest import synthetic_images

    images = synthetic_images(40, 7)
    lossless = LosslessCodec(model)
    data = lossless.compress(images)
    assert data[1] >> 4 == fmt.EXACT_VERSION and np.array_equal(lossless.decompress(data), images)
    near = NearLosslessCodec(model, 3)
    singles = near.compress_each(images[:3])
    for data, want in [(near.compress(images), images)] + [(d, images[i : i + 1]) for i, d in enumerate(singles)]:
        assert data[1] >> 4 == fmt.EXACT_VERSION
        assert np.abs(near.decompress(data).astype(int) - want).max() <= 3
    assert any(d[2] >> 4 for d in singles)  # a quantized latent (codec.json)
    lossy = Codec(model)
    data = lossy.compress(images[:4])
    assert data[1] >> 4 == fmt.VERSION and lossy.decompress(data).shape == images[:4].shape
    # the float API on integer graphs: sampling (no prior.onnx: N(0, I)), reconstruction, scores, info
    from edgevae.runtime.novelty import score
    from edgevae.runtime.reports import bundle_text

    assert model.prior == "normal" and model.sample(3, seed=0).shape == (3, 1, 28, 28)
    assert model.reconstruct(images[:2]).dtype == np.uint8
    assert np.isfinite(score(model, images[:2]).bits_per_dim).all()
    assert "integer arithmetic" in bundle_text(model.bundle, False)
