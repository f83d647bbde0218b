"""edgevae.runtime's Python API: load + bundle verification, encode/decode/sample/... on tiny_bundle."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgevae.exported
import edgevae.runtime as ev
from conftest import BAD_LATENT_KINDS, BUNDLE_DAMAGE_KINDS, damage_bundle, make_bad_latents, synthetic_images
from edgevae.runtime import contract
from edgevae.runtime.bundle import MODEL_ENV, read_bundle, resolve_path, sha256_file, shipped_bundles
from edgevae.runtime.errors import BundleError, EdgeVAEError, InputError

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Twelve images the tiny model was not trained on."""
    return synthetic_images(12, seed=99)


# -- loading and verification -------------------------------------------------------------------


def test_public_api() -> None:
    assert set(ev.__all__) >= {"load", "EdgeVAE", "InputError", "OutputError", "BundleError", "EdgeVAEError"}
    for name in ("InputError", "OutputError", "BundleError"):
        assert issubclass(getattr(ev, name), EdgeVAEError)


def test_load_reads_the_manifest(tiny_bundle: Path, tiny_model: ev.EdgeVAE) -> None:
    assert isinstance(tiny_model, ev.EdgeVAE)
    assert tiny_model.image_shape == SHAPE
    assert tiny_model.latent_dim == 8
    bundle = tiny_model.bundle
    assert bundle.path == tiny_bundle and bundle.components == 3 and bundle.precision == "fp32"
    assert len(bundle.fingerprint) == 32
    assert "latent_dim=8" in repr(tiny_model)


def test_load_none_uses_env_then_default(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_ENV, str(tiny_bundle))
    assert ev.load().bundle.path == tiny_bundle
    monkeypatch.delenv(MODEL_ENV)
    monkeypatch.setattr(edgevae.exported, "DEFAULT_BUNDLE", tmp_path / "no-default")
    with pytest.raises(BundleError, match="no-default: no such model bundle folder"):
        ev.load()
    # An explicit path wins over the environment.
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "elsewhere"))
    assert ev.load(tiny_bundle).bundle.path == tiny_bundle


def test_shipped_bundles_load_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = shipped_bundles()
    assert {"fashion-mnist", "fashion-mnist-int8"} <= set(shipped)
    assert resolve_path("fashion-mnist-int8") == shipped["fashion-mnist-int8"]
    monkeypatch.setenv(MODEL_ENV, "fashion-mnist-int8")
    assert resolve_path(None) == shipped["fashion-mnist-int8"]
    # A folder of that name in the working directory wins; paths with a folder part never resolve by name.
    (tmp_path / "fashion-mnist-int8").mkdir()
    assert resolve_path("fashion-mnist-int8") == Path("fashion-mnist-int8")
    assert resolve_path("sub/fashion-mnist") == Path("sub/fashion-mnist")
    with pytest.raises(BundleError, match=r"nope: no such model bundle folder \(shipped bundles by name: .*fashion-mnist-int8"):
        read_bundle("nope")


@pytest.mark.parametrize("kind", BUNDLE_DAMAGE_KINDS)
def test_damaged_bundles_are_refused(kind: str, tiny_bundle: Path, tmp_path: Path) -> None:
    path, phrase = damage_bundle(kind, tiny_bundle, tmp_path)
    with pytest.raises(BundleError) as caught:
        ev.load(path)
    assert phrase in str(caught.value)
    assert "\n" not in str(caught.value)


def test_tamper_check_happens_before_onnx_runtime(tiny_bundle: Path, tmp_path: Path) -> None:
    """A byte flipped in the weights still parses as ONNX; only the sha256 check can catch it."""
    path, _ = damage_bundle("tampered_encoder", tiny_bundle, tmp_path)
    with pytest.raises(BundleError, match=r"encoder\.onnx: sha256 does not match model\.json"):
        read_bundle(path)


def _rehash(folder: Path) -> None:
    manifest = json.loads((folder / "model.json").read_text())
    for spec in contract.GRAPHS:
        manifest["graphs"][spec.key]["sha256"] = sha256_file(folder / spec.file)
    (folder / "model.json").write_text(json.dumps(manifest))


def test_graph_that_breaks_the_contract_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "swapped"
    shutil.copytree(tiny_bundle, folder)
    shutil.copyfile(folder / "decoder.onnx", folder / "encoder.onnx")
    _rehash(folder)  # hashes match: only the contract check can notice
    with pytest.raises(BundleError, match="do not follow the edgevae contract"):
        ev.load(folder)


def test_graph_onnx_runtime_cannot_load_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    shutil.copytree(tiny_bundle, folder)
    (folder / "decoder.onnx").write_bytes(b"not an onnx model at all")
    _rehash(folder)
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        ev.load(folder)


# -- encode / decode ----------------------------------------------------------------------------


def test_encode_shapes_and_dtypes(tiny_model: ev.EdgeVAE, images: np.ndarray) -> None:
    mean, logvar = tiny_model.encode(images)
    assert mean.shape == logvar.shape == (12, 8)
    assert mean.dtype == logvar.dtype == np.float32
    assert np.isfinite(mean).all() and np.isfinite(logvar).all()


def test_single_image_and_integer_arrays_are_accepted(tiny_model: ev.EdgeVAE, images: np.ndarray) -> None:
    mean, logvar = tiny_model.encode(images)
    one_mean, one_logvar = tiny_model.encode(images[3])
    assert one_mean.shape == (1, 8)
    np.testing.assert_allclose(one_mean[0], mean[3], atol=1e-5)
    np.testing.assert_allclose(one_logvar[0], logvar[3], atol=1e-5)
    wide_ints = tiny_model.encode(images.astype(np.int64))[0]
    np.testing.assert_array_equal(wide_ints, mean)


def test_decode_shapes_and_dtypes(tiny_model: ev.EdgeVAE) -> None:
    z = np.random.default_rng(1).standard_normal((5, 8))  # float64 is accepted
    pixels = tiny_model.decode(z)
    assert pixels.shape == (5, *SHAPE) and pixels.dtype == np.uint8
    single = tiny_model.decode(z[2])
    assert single.shape == (1, *SHAPE)
    assert np.abs(single[0].astype(int) - pixels[2]).max() <= 1


def test_empty_batches(tiny_model: ev.EdgeVAE) -> None:
    mean, logvar = tiny_model.encode(np.zeros((0, *SHAPE), np.uint8))
    assert mean.shape == logvar.shape == (0, 8)
    pixels = tiny_model.decode(np.zeros((0, 8), np.float32))
    assert pixels.shape == (0, *SHAPE) and pixels.dtype == np.uint8
    assert tiny_model.sample(0, seed=1).shape == (0, *SHAPE)


def test_likelihood_parameters_follow_the_contract(tiny_model: ev.EdgeVAE) -> None:
    """Mixture params are in the normalized domain; their mixture mean gives ``decode``'s pixels."""
    z = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
    params = tiny_model.likelihood(z)
    for array in (params.logits, params.means, params.log_scales):
        assert array.shape == (4, 3, *SHAPE) and array.dtype == np.float32
    assert np.abs(params.means).max() <= 1.0
    weights = np.exp(params.logits - params.logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    mean_pixels = np.clip(((weights * params.means).sum(1) + 1.0) * 127.5, 0, 255)
    assert np.abs(np.round(mean_pixels) - tiny_model.decode(z)).max() <= 1


@pytest.mark.parametrize("kind", BAD_LATENT_KINDS)
def test_bad_latents_are_refused(kind: str, tiny_model: ev.EdgeVAE) -> None:
    latents, phrase = make_bad_latents(kind, tiny_model.latent_dim)
    with pytest.raises(InputError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        tiny_model.decode(latents)
    with pytest.raises(InputError):
        tiny_model.likelihood(latents)


@pytest.mark.parametrize("bad, phrase", [
    (np.zeros((2, 1, 28, 27), np.uint8), r"shape \(N, 1, 28, 28\)"),
    (np.zeros((2, 3, 28, 28), np.uint8), r"shape \(N, 1, 28, 28\)"),
    (np.zeros((28, 28), np.uint8), r"got \(28, 28\)"),
    (np.zeros((1, 1, 1, 28, 28), np.uint8), "shape"),
    (np.zeros((2, 1, 28, 28), np.float32), "uint8 pixels"),
    (np.full((2, 1, 28, 28), 256, np.int32), "uint8 pixels"),
    (np.full((2, 1, 28, 28), -1, np.int16), "uint8 pixels"),
])
def test_bad_images_are_refused(tiny_model: ev.EdgeVAE, bad: np.ndarray, phrase: str) -> None:
    with pytest.raises(InputError, match=phrase):
        tiny_model.encode(bad)
    with pytest.raises(InputError, match=phrase):
        tiny_model.reconstruct(bad)


# -- sample / reconstruct / interpolate ---------------------------------------------------------


def test_sample_is_repeatable_per_seed(tiny_model: ev.EdgeVAE) -> None:
    a = tiny_model.sample(6, seed=123)
    assert a.shape == (6, *SHAPE) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, tiny_model.sample(6, seed=123))
    assert not np.array_equal(a, tiny_model.sample(6, seed=124))
    # The noise is numpy's, from the seed: sample == decode(temperature * eps).
    eps = np.random.default_rng(123).standard_normal((6, 8), dtype=np.float32)
    np.testing.assert_array_equal(a, tiny_model.decode(eps))


def test_sample_temperature(tiny_model: ev.EdgeVAE) -> None:
    frozen = tiny_model.sample(5, temperature=0.0, seed=3)
    assert (frozen == frozen[0]).all()
    np.testing.assert_array_equal(frozen[0], tiny_model.decode(np.zeros((1, 8)))[0])
    eps = np.random.default_rng(3).standard_normal((5, 8), dtype=np.float32)
    np.testing.assert_array_equal(tiny_model.sample(5, temperature=0.5, seed=3), tiny_model.decode(eps * 0.5))


@pytest.mark.parametrize("n, temperature, phrase", [(-1, 1.0, "number of samples"), (2, -0.1, "temperature"),
                                                    (2, float("nan"), "temperature"), (2, float("inf"), "temperature")])
def test_sample_refuses_bad_arguments(tiny_model: ev.EdgeVAE, n: int, temperature: float, phrase: str) -> None:
    with pytest.raises(InputError, match=phrase):
        tiny_model.sample(n, temperature=temperature, seed=0)


def test_sample_refuses_a_negative_seed(tiny_model: ev.EdgeVAE) -> None:
    with pytest.raises(InputError, match="seed"):
        tiny_model.sample(2, seed=-1)


def test_reconstruct_is_decode_of_the_posterior_mean(tiny_model: ev.EdgeVAE, images: np.ndarray) -> None:
    recon = tiny_model.reconstruct(images)
    assert recon.shape == images.shape and recon.dtype == np.uint8
    mean, _ = tiny_model.encode(images)
    np.testing.assert_array_equal(recon, tiny_model.decode(mean))


def test_interpolate(tiny_model: ev.EdgeVAE, images: np.ndarray) -> None:
    a, b = images[0], images[1]
    steps = tiny_model.interpolate(a, b, steps=5)
    assert steps.shape == (5, *SHAPE) and steps.dtype == np.uint8
    recon = tiny_model.reconstruct(np.stack([a, b]))
    # The ends are the reconstructions (a different batch size may round a rare pixel the other way).
    assert np.abs(steps[0].astype(int) - recon[0]).max() <= 1
    assert np.abs(steps[-1].astype(int) - recon[1]).max() <= 1
    mean, _ = tiny_model.encode(np.stack([a, b]))
    middle = tiny_model.decode((mean[0] + mean[1]) / 2)[0]
    assert np.abs(steps[2].astype(int) - middle).max() <= 1
    # A batch of one is accepted for either end.
    assert tiny_model.interpolate(a[None], b[None], steps=2).shape == (2, *SHAPE)


@pytest.mark.parametrize("steps", [1, 0, -3])
def test_interpolate_needs_two_steps(tiny_model: ev.EdgeVAE, images: np.ndarray, steps: int) -> None:
    with pytest.raises(InputError, match="at least 2 steps"):
        tiny_model.interpolate(images[0], images[1], steps=steps)


def test_interpolate_needs_one_image_per_end(tiny_model: ev.EdgeVAE, images: np.ndarray) -> None:
    with pytest.raises(InputError, match="exactly one image"):
        tiny_model.interpolate(images[:2], images[2], steps=3)


# -- threads ------------------------------------------------------------------------------------


def test_one_model_serves_many_threads(tiny_model: ev.EdgeVAE) -> None:
    batches = [synthetic_images(9, seed=s) for s in range(16)]
    latents = [np.random.default_rng(s).standard_normal((9, 8)).astype(np.float32) for s in range(16)]

    def work(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, logvar = tiny_model.encode(batches[i])
        return mean, logvar, tiny_model.decode(latents[i])

    serial = [work(i) for i in range(16)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(work, range(16)))
    for want, got in zip(serial, parallel):
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g, w)


def test_thread_count_is_configurable(tiny_bundle: Path, tiny_model: ev.EdgeVAE, images: np.ndarray) -> None:
    single = ev.load(tiny_bundle, threads=1)
    for session in (single.sessions["encoder"], single.sessions["decoder"]):
        assert session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(single.encode(images)[0], tiny_model.encode(images)[0], atol=1e-5)
    assert np.abs(single.sample(4, seed=9).astype(int) - tiny_model.sample(4, seed=9)).max() <= 1
