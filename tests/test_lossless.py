"""Lossless bits-back coding (runtime/bitsback.py): exact round trips, determinism across thread
counts and network batch sizes, out-of-distribution images, the rate against the negative ELBO,
the integer tables, and damaged payloads (a typed error, never wrong pixels)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import edgevae.runtime as ev
from conftest import synthetic_images
from edgevae.exported import DEFAULT_BUNDLE
from edgevae.runtime import bitsback as bb
from edgevae.runtime import likelihood as lik
from edgevae.runtime.errors import ContainerError, InputError

FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def fashion_images(n: int) -> np.ndarray:
    """The first ``n`` Fashion-MNIST test images, uint8 (n, 1, 28, 28)."""
    with gzip.open(FASHION_TEST, "rb") as f:
        raw = f.read(16 + n * 784)
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, 28, 28).copy()


def drawn_digits(n: int, seed: int = 0) -> np.ndarray:
    """Digits drawn with Pillow's built-in font, randomly placed: not clothing at all."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 1, 28, 28), np.uint8)
    for i in range(n):
        canvas = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(3):
            draw.text((int(rng.integers(0, 20)), int(rng.integers(0, 16))), str(int(rng.integers(0, 10))),
                      fill=int(rng.integers(128, 256)))
        draw.line([tuple(rng.integers(0, 28, 2)), tuple(rng.integers(0, 28, 2))], fill=255, width=2)
        out[i, 0] = np.asarray(canvas)
    return out


def ood_images() -> dict[str, np.ndarray]:
    """Images no clothing model expects; each must still round-trip exactly."""
    rng = np.random.default_rng(7)
    checker = ((np.indices((28, 28)).sum(0) % 2) * 255).astype(np.uint8)
    return {
        "uniform noise": rng.integers(0, 256, size=(3, 1, 28, 28), dtype=np.uint8),
        "all black": np.zeros((2, 1, 28, 28), np.uint8),
        "all white": np.full((2, 1, 28, 28), 255, np.uint8),
        "checkerboard": np.stack([checker[None], 255 - checker[None]]),
        "drawn digits": drawn_digits(4),
        "extreme levels": rng.choice(np.array([0, 1, 254, 255], np.uint8), size=(2, 1, 28, 28)),
    }


class RowByRow:
    """An EdgeVAE whose every network call runs one image at a time (batch size 1), then concatenates."""

    def __init__(self, model: ev.EdgeVAE) -> None:
        self.model = model
        self.image_shape = model.image_shape
        self.latent_dim = model.latent_dim
        self.bundle = model.bundle
        self.check_images = model.check_images

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.model.encode(image[None]) for image in images]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def likelihood(self, latents: np.ndarray) -> ev.MixtureParams:
        parts = [self.model.likelihood(z[None]) for z in latents]
        return ev.MixtureParams(*(np.concatenate([getattr(p, f) for p in parts])
                                  for f in ("logits", "means", "log_scales")))


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> ev.EdgeVAE:
    return ev.load(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def model2(tiny_bundle: Path) -> ev.EdgeVAE:
    return ev.load(tiny_bundle, threads=2)


def round_trip(model: ev.EdgeVAE, images: np.ndarray) -> bb.Encoded:
    encoded = bb.encode(model, images)
    decoded = bb.decode(model, encoded.payload, len(images))
    assert decoded.dtype == np.uint8 and decoded.shape == images.shape
    np.testing.assert_array_equal(decoded, images)
    return encoded


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 31, 64, 97])
def test_round_trip_is_exact(model: ev.EdgeVAE, count: int) -> None:
    images = synthetic_images(count, seed=count)
    encoded = round_trip(model, images)
    assert encoded.count == count and encoded.chains == bb.chain_count(count)
    # A payload is far below the raw 8 bits per pixel of these mostly black images.
    assert len(encoded.payload) < count * images[0].size


def test_single_image_without_batch_axis(model: ev.EdgeVAE) -> None:
    image = synthetic_images(1, seed=3)[0]
    encoded = bb.encode(model, image)
    np.testing.assert_array_equal(bb.decode(model, encoded.payload, 1)[0], image)


def test_zero_images(model: ev.EdgeVAE) -> None:
    encoded = bb.encode(model, np.zeros((0, 1, 28, 28), np.uint8))
    assert encoded.count == 0 and encoded.chains == 0
    assert bb.decode(model, encoded.payload, 0).shape == (0, 1, 28, 28)


@pytest.fixture(scope="module")
def fashion_model() -> ev.EdgeVAE:
    """The shipped Fashion-MNIST model."""
    return ev.load(DEFAULT_BUNDLE)


@pytest.mark.slow
def test_fashion_mnist_round_trip_tracks_the_negative_elbo(fashion_model: ev.EdgeVAE) -> None:
    images = fashion_images(300)
    encoded = round_trip(fashion_model, images)
    nelbo, iwae = lik.negative_elbo(fashion_model, images, samples=4)
    assert iwae.mean() <= nelbo.mean()
    # Bits back: the steady-state cost is the negative ELBO (plus quantization), not ELBO + KL.
    net = encoded.net_bits_per_image()
    assert 0.97 * nelbo.mean() <= net <= 1.03 * nelbo.mean(), (net, nelbo.mean())
    assert encoded.gross_bits_per_image() >= net


# -- determinism ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_bytes_across_runs_and_thread_counts(model: ev.EdgeVAE, model2: ev.EdgeVAE) -> None:
    images = synthetic_images(70, seed=11)
    one = bb.encode(model, images).payload
    assert bb.encode(model, images).payload == one
    assert bb.encode(model2, images).payload == one
    np.testing.assert_array_equal(bb.decode(model2, one, len(images)), images)


def test_same_bytes_when_the_networks_run_one_image_at_a_time(model: ev.EdgeVAE) -> None:
    """Network batch size does not change the bytes, and decoding works across batch sizes."""
    images = synthetic_images(40, seed=12)
    batched = bb.encode(model, images).payload
    single = RowByRow(model)
    assert bb.encode(single, images).payload == batched
    np.testing.assert_array_equal(bb.decode(single, batched, len(images)), images)


def _step_tables(model: ev.EdgeVAE, images: np.ndarray) -> list[np.ndarray]:
    """Every table one step builds for ``images``, in coding order (first images of chains)."""
    t = bb.tables(bb.LATENT_BUCKET_BITS)
    posterior = bb._Posterior(t, *model.encode(images))
    z = posterior.mode
    likelihood = bb._Likelihood(model.likelihood(t.centers[z]), t)
    x = images.reshape(len(images), -1)
    component_posterior, k = likelihood.component_posterior(x)
    first = likelihood.chosen(k)
    return [posterior.groups(), posterior.within(z // t.fine), likelihood.weights, component_posterior,
            likelihood.groups(first), likelihood.within(first, x // bb.PIXEL_GROUP)]


def test_tables_do_not_depend_on_the_batch(model: ev.EdgeVAE) -> None:
    images = synthetic_images(9, seed=13)
    whole = _step_tables(model, images)
    for i in range(len(images)):
        for one, many in zip(_step_tables(model, images[i : i + 1]), whole):
            np.testing.assert_array_equal(one[0], many[i])


# -- the integer tables --------------------------------------------------------------------------


def _masses(floats: np.ndarray) -> np.ndarray:
    """constriction floats -> the integer masses they stand for (each float must be an exact integer)."""
    assert floats.dtype == np.float32
    ints = floats.astype(np.int64)
    np.testing.assert_array_equal(ints, floats)
    return ints + 1


def test_every_table_is_exact_and_gives_every_symbol_mass(model: ev.EdgeVAE) -> None:
    images = np.concatenate([synthetic_images(3, seed=5), *ood_images().values()])
    for table in _step_tables(model, images):
        masses = _masses(table)
        assert masses.min() >= 1
        assert (masses.sum(axis=-1) == bb.TOTAL).all()


def test_two_stage_pixel_code_matches_the_single_level_masses(model: ev.EdgeVAE) -> None:
    """Group then level within the group costs what the level's own mass says, for every level."""
    t = bb.tables(bb.LATENT_BUCKET_BITS)
    images = synthetic_images(2, seed=8)
    likelihood = bb._Likelihood(model.likelihood(t.centers[bb._Posterior(t, *model.encode(images)).mode]), t)
    first = likelihood.chosen(np.zeros((2, 784), np.int32))[:, :50]  # 50 pixels, all 256 levels each
    # The full-table cumulative C(v) = G(v) + v of the class docstring, straight from the lookup table.
    v = np.arange(bb.LEVELS + 1)
    g = np.where(v == 0, 0, np.where(v == bb.LEVELS, bb.TOTAL - bb.LEVELS, t.padded[first[..., None] + v - 1]))
    single = np.diff(g + v, axis=-1)
    groups = _masses(likelihood.groups(first))
    two_stage = np.empty(single.shape)
    for g in range(bb.LEVELS // bb.PIXEL_GROUP):
        within = _masses(likelihood.within(first, np.full(first.shape, g)))
        two_stage[..., g * 16 : (g + 1) * 16] = groups[..., g : g + 1] * within / bb.TOTAL
    assert (single >= 1).all() and (single.sum(-1) == bb.TOTAL).all()
    big = single > 1000  # where flooring is negligible the two codes agree to a thousandth of a bit
    np.testing.assert_allclose(np.log2(two_stage[big]), np.log2(single[big]), atol=1e-3)


def test_categorical_is_proportional_and_exact() -> None:
    weights = np.array([[0, 1, 3], [5, 0, 0], [1, 1, 1]], dtype=np.int64)
    masses = _masses(bb._categorical(weights))
    assert (masses.sum(1) == bb.TOTAL).all() and masses.min() >= 1
    assert abs(masses[0, 2] / masses[0, 1] - 3) < 1e-4
    assert masses[1, 0] == bb.TOTAL - 2


def test_latent_buckets_have_equal_prior_mass() -> None:
    from statistics import NormalDist

    t = bb.tables(bb.LATENT_BUCKET_BITS)
    cdf = np.array([NormalDist().cdf(e) for e in t.edges[:: max(1, len(t.edges) // 64)]])
    spacing = np.diff(cdf) / (max(1, len(t.edges) // 64) / t.buckets)
    np.testing.assert_allclose(spacing, 1.0, atol=1e-6)
    assert np.all(np.diff(t.centers) > 0) and len(t.centers) == t.buckets


# -- out-of-distribution images --------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ood_images()))
def test_out_of_distribution_images_round_trip(model: ev.EdgeVAE, kind: str) -> None:
    round_trip(model, ood_images()[kind])


def test_noise_costs_more_than_in_distribution_images(model: ev.EdgeVAE) -> None:
    noise = bb.encode(model, ood_images()["uniform noise"])
    usual = bb.encode(model, synthetic_images(3, seed=1))
    assert len(noise.payload) > 2 * len(usual.payload)
    # Noise cannot be compressed: at least ~8 bits per pixel.
    assert 8 * len(noise.payload) >= 3 * 784 * 7.9


# -- damaged payloads ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(model: ev.EdgeVAE) -> tuple[np.ndarray, bytes]:
    images = synthetic_images(40, seed=21)
    return images, bb.encode(model, images).payload


def _decode_or_error(model: ev.EdgeVAE, payload: bytes, images: np.ndarray, count: int | None = None) -> None:
    """Decoding damaged data must raise ContainerError; it must never return pixels."""
    with pytest.raises(ContainerError):
        decoded = bb.decode(model, payload, len(images) if count is None else count)
        pytest.fail(f"damaged payload decoded (equal to the original: {np.array_equal(decoded, images)})")


@pytest.mark.slow
def test_bit_flips_are_detected(model: ev.EdgeVAE, sample: tuple[np.ndarray, bytes]) -> None:
    images, payload = sample
    rng = np.random.default_rng(0)
    positions = sorted({0, 1, 2, 5, 8, len(payload) // 2, len(payload) - 1, *rng.integers(0, len(payload), 12)})
    for pos in positions:
        damaged = bytearray(payload)
        damaged[pos] ^= 1 << int(rng.integers(0, 8))
        _decode_or_error(model, bytes(damaged), images)


def test_truncation_and_extension_are_detected(model: ev.EdgeVAE, sample: tuple[np.ndarray, bytes]) -> None:
    images, payload = sample
    for cut in (0, 1, 3, 6, 9, len(payload) // 2, len(payload) - 4, len(payload) - 1):
        _decode_or_error(model, payload[:cut], images)
    _decode_or_error(model, payload + b"\x01", images)
    _decode_or_error(model, payload + b"\x00\x00\x00\x07", images)


def test_wrong_count_is_detected(model: ev.EdgeVAE, sample: tuple[np.ndarray, bytes]) -> None:
    images, payload = sample
    for count in (0, 1, len(images) - 1, len(images) + 1, 10**9):
        _decode_or_error(model, payload, images, count=count)


def test_header_fields_are_checked(model: ev.EdgeVAE, sample: tuple[np.ndarray, bytes]) -> None:
    images, payload = sample
    header = bb.read_payload_header(payload, len(images))
    assert header.bucket_bits == bb.LATENT_BUCKET_BITS and header.chains == bb.chain_count(len(images))
    for bits in (0, bb.MIN_BUCKET_BITS - 1, bb.MAX_BUCKET_BITS + 1, 255):
        with pytest.raises(ContainerError, match="bucket bits"):
            bb.read_payload_header(bytes([bits]) + payload[1:], len(images))
    with pytest.raises(ContainerError, match="chains"):
        bb.read_payload_header(payload[:1] + bytes([bb.MAX_CHAINS + 1]) + payload[2:], 1000)
    with pytest.raises(ContainerError, match="cannot fit"):
        bb.read_payload_header(payload, 10**9)


def test_another_model_fails_the_checksum(model: ev.EdgeVAE, sample: tuple[np.ndarray, bytes],
                                          tiny_bundle: Path, tmp_path: Path) -> None:
    """A payload decoded with a model whose outputs differ (here: every logit shifted) is refused."""
    images, payload = sample

    class Shifted(RowByRow):
        def likelihood(self, latents: np.ndarray) -> ev.MixtureParams:
            p = self.model.likelihood(latents)
            shift = np.float32(0.5) * np.arange(p.logits.shape[1], dtype=np.float32)[:, None, None, None]
            return ev.MixtureParams(p.logits + shift, p.means, p.log_scales)

    _decode_or_error(Shifted(model), payload, images)


# -- input checks ----------------------------------------------------------------------------------


def test_bad_images_are_refused(model: ev.EdgeVAE) -> None:
    with pytest.raises(InputError):
        bb.encode(model, np.zeros((2, 3, 28, 28), np.uint8))
    with pytest.raises(InputError):
        bb.encode(model, np.full((1, 1, 28, 28), 300, np.int32))


def test_net_and_gross_accounting(model: ev.EdgeVAE) -> None:
    images = synthetic_images(64, seed=2)
    encoded = bb.encode(model, images)
    assert encoded.chains == 2
    assert 0 < encoded.initial_bits < encoded.coded_bits <= 8 * len(encoded.payload)
    assert encoded.net_bits_per_image() == pytest.approx(
        (encoded.coded_bits - encoded.initial_bits) / (len(images) - encoded.chains))
    assert bb.encode(model, images[:1]).net_bits_per_image() is None


# -- through the codec and the CLI -----------------------------------------------------------------


@pytest.fixture(scope="module")
def codec(model: ev.EdgeVAE) -> ev.Codec:
    return ev.Codec(model)


@pytest.fixture(scope="module")
def lossless(model: ev.EdgeVAE) -> ev.LosslessCodec:
    return ev.LosslessCodec(model)


def test_codec_lossless_round_trip(codec: ev.Codec, lossless: ev.LosslessCodec) -> None:
    images = np.concatenate([synthetic_images(40, seed=31), ood_images()["drawn digits"]])
    data = lossless.compress(images)
    info = codec.describe(data)
    assert info.mode == "lossless" and info.count == len(images) and info.checksum_ok
    np.testing.assert_array_equal(codec.decompress(data), images)
    np.testing.assert_array_equal(codec.decompress(data, indices=[7, 0, 7]), images[[7, 0, 7]])
    # The lossy container of the same images is far smaller and not exact.
    lossy = codec.compress(images)
    assert len(lossy) < len(data) / 5
    assert not np.array_equal(codec.decompress(lossy), images)


def test_codec_lossless_one_container_per_image(codec: ev.Codec, lossless: ev.LosslessCodec) -> None:
    images = synthetic_images(3, seed=32)
    containers = lossless.compress_each(images)
    assert len(containers) == 3
    for image, data in zip(images, containers):
        assert codec.describe(data).count == 1
        np.testing.assert_array_equal(codec.decompress(data)[0], image)


def test_codec_lossless_refuses_a_quality_and_no_images(codec: ev.Codec, lossless: ev.LosslessCodec) -> None:
    with pytest.raises(TypeError, match="quality"):  # a lossless codec has no quality to pass
        lossless.compress(synthetic_images(2), quality=codec.qualities[0])  # type: ignore[call-arg]
    with pytest.raises(InputError, match="no images"):
        lossless.compress(np.zeros((0, 1, 28, 28), np.uint8))
    with pytest.raises(InputError, match="no images"):
        lossless.compress_each(np.zeros((0, 1, 28, 28), np.uint8))


def test_codec_lossless_damage_is_an_error(lossless: ev.LosslessCodec) -> None:
    codec = lossless
    images = synthetic_images(12, seed=33)
    data = lossless.compress(images)
    for pos in (0, 2, 3, len(data) // 2, len(data) - 5, len(data) - 1):
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        with pytest.raises(ContainerError):
            codec.decompress(bytes(damaged))
    with pytest.raises(ContainerError):
        codec.decompress(data[:-7])


@pytest.mark.parametrize("mode", ["runner", pytest.param("subprocess", marks=pytest.mark.slow)])
def test_cli_lossless_round_trip_and_errors(mode: str, tiny_bundle: Path, tmp_path: Path) -> None:
    from test_cli import assert_clean_error, edgevae, files_under

    images = synthetic_images(9, seed=34)
    np.save(tmp_path / "in.npy", images)
    env = {"EDGEVAE_MODEL": str(tiny_bundle)}
    done = edgevae(mode, "compress", tmp_path / "in.npy", "-o", tmp_path / "all.evz", "--lossless", "--json", env=env)
    assert done.code == 0, done
    summary = json.loads(done.stdout)
    assert summary["lossless"] is True and summary["count"] == 9
    info = edgevae(mode, "info", tmp_path / "all.evz", env=env)
    assert info.code == 0 and "lossless" in info.stdout, info
    done = edgevae(mode, "decompress", tmp_path / "all.evz", "-o", tmp_path / "out.npy", env=env)
    assert done.code == 0, done
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), images)

    assert_clean_error(edgevae(mode, "compress", tmp_path / "in.npy", "-o", tmp_path / "q.evz", "--lossless",
                               "--quality", "0", env=env), "--quality", "--lossless")
    data = bytearray((tmp_path / "all.evz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "bad.evz").write_bytes(bytes(data))
    before = files_under(tmp_path)
    assert_clean_error(edgevae(mode, "decompress", tmp_path / "bad.evz", "-o", tmp_path / "bad.npy", env=env),
                       "damaged")
    assert files_under(tmp_path) == before


@pytest.mark.slow
def test_a_one_component_bundle_round_trips_losslessly() -> None:
    """fashion-mnist-codec has one logistic per pixel: the component is not coded (constriction
    cannot represent a one-symbol distribution), and every pixel still comes back."""
    from edgevae.exported import DEFAULT_CODEC_BUNDLE
    from edgevae.training.data import load_fashion_mnist

    model = ev.load(DEFAULT_CODEC_BUNDLE)
    assert model.bundle.components == 1
    codec = ev.LosslessCodec(model)
    x = np.concatenate([load_fashion_mnist().test[:40], synthetic_images(8, seed=21)])
    data = codec.compress(x)
    assert np.array_equal(codec.decompress(data), x)
    assert np.array_equal(codec.decompress(data, indices=[41]), x[41:42])
    assert 2.0 < 8 * len(data) / x.size < 4.5
