"""Near-lossless coding (runtime/nearlossless.py, the binned bits-back of runtime/bitsback.py, the
container's mode 2) and the lossy codec's high-quality levels: the L-infinity bound on real and
out-of-domain images, through the API and the CLI, byte bands, damaged files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgevae.runtime as ev
from edgevae.runtime import bitsback as bb
from edgevae.runtime import container as fmt
from edgevae.runtime.cli import main
from edgevae.runtime.errors import ContainerError, InputError
from edgevae.runtime.images import psnr

FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
KS = (1, 2, 4, 8, 16, 32)


def fashion_images(n: int, start: int = 0) -> np.ndarray:
    """Fashion-MNIST test images start .. start + n, uint8 (n, 1, 28, 28)."""
    with gzip.open(FASHION_TEST, "rb") as f:
        raw = f.read(16 + (start + n) * 784)
    return np.frombuffer(raw, dtype=np.uint8, offset=16 + start * 784).reshape(n, 1, 28, 28).copy()


def out_of_domain(seed: int = 0) -> np.ndarray:
    """Noise, black, white, mid-grey, a gradient, and thin strokes: nothing like clothing."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(2, 1, 28, 28), dtype=np.uint8)
    flat = np.stack([np.full((1, 28, 28), v, np.uint8) for v in (0, 255, 128, 1, 254)])
    gradient = np.broadcast_to(np.linspace(0, 255, 28).astype(np.uint8), (1, 1, 28, 28)).copy()
    strokes = np.zeros((2, 1, 28, 28), np.uint8)
    strokes[0, 0, 4:24, 13:15] = 255
    strokes[1, 0, 6:8, 3:25] = 200
    strokes[1, 0, 8:22, 20:22] = 90
    return np.concatenate([noise, flat, gradient, strokes])


def max_error(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


@pytest.fixture(scope="module")
def codecs() -> dict[int, ev.NearLosslessCodec]:
    return {k: ev.open_codec("near-lossless", max_error=k) for k in KS}


# -- the binning: what makes the bound hold -----------------------------------------------------


@pytest.mark.parametrize("k", range(0, fmt.MAX_ERROR + 1))
def test_bins_cover_every_level_once_and_are_narrow_enough(k: int) -> None:
    bins = bb.binning(k)
    assert bins.starts[0] == 0 and bins.ends[-1] == 255
    assert (bins.starts[1:] == bins.ends[:-1] + 1).all()
    assert (bins.ends - bins.starts + 1 <= 2 * k + 1).all()  # some value is within k of the whole bin
    assert (bins.starts[bins.of_level] <= np.arange(256)).all() and (bins.ends[bins.of_level] >= np.arange(256)).all()
    assert bins.groups >= 2 and bins.group >= 2
    assert ((bins.representative >= bins.starts) & (bins.representative <= bins.ends)).all()
    if k:
        assert bins.ends[0] == k and bins.starts[-1] == 255 - k  # 0 and 255 can come back exactly


@pytest.mark.parametrize("k", [1, 2, 5, 16, 31, 32])
def test_centred_bins_cover_every_level_once_and_are_narrow_enough(k: int) -> None:
    """Single images' bins (centred on the model's prediction), for every possible prediction."""
    from types import SimpleNamespace

    prediction = np.arange(-3, 260)[None]  # (1, P): every level, and out-of-range predictions
    bins = bb.pixel_bins(SimpleNamespace(prediction=prediction), k)  # type: ignore[arg-type]
    edges = bins.edges[0]
    assert (edges[:, 0] == 0).all() and (edges[:, -1] == 256).all() and (np.diff(edges, axis=1) >= 0).all()
    assert (np.diff(edges, axis=1) <= 2 * k + 1).all()
    # Every level's symbol names a bin that holds it, for every prediction.
    for v in range(256):
        lo, hi = bins.bounds(bins.symbols(np.full((1, edges.shape[0]), v)))
        assert ((lo <= v) & (v <= hi) & (hi - lo <= 2 * k)).all(), v
    # Predictions within k of an end snap to it: the end bins are [0, k] and [255 - k, 255].
    near_black = prediction[0] <= k
    assert (edges[near_black, 1] == k + 1).all()


def test_lossless_binning_is_the_levels() -> None:
    bins = bb.binning(0)
    assert bins.bins == 256 and bins.group == bb.PIXEL_GROUP and (bins.representative == np.arange(256)).all()


@pytest.mark.parametrize("bad", [-1, 33, 1.5, True, None, "4"])
def test_max_error_outside_the_range_is_an_input_error(bad: object) -> None:
    with pytest.raises(InputError, match="max error must be an integer from 1 to 32"):
        ev.open_codec("near-lossless", max_error=bad)  # type: ignore[arg-type]


def test_max_error_belongs_to_near_lossless_only() -> None:
    with pytest.raises(InputError, match="near-lossless"):
        ev.open_codec("lossless", max_error=2)


@pytest.mark.parametrize("k", range(1, fmt.MAX_ERROR + 1))
def test_reconstruction_is_within_k_of_its_bin_for_any_model_output(k: int) -> None:
    """The bound holds whatever the likelihood says: every bin of the fixed binning and of bins
    centred on any prediction, under a grid of one-component likelihoods from sharp to flat with
    their mass anywhere, including far from the bin (a top bin the model gives almost no mass
    once decoded to 255.5, rounded to 256 and cast to 0), and under random mixtures."""
    from edgevae.runtime.likelihood import MixtureParams
    from edgevae.runtime.nearlossless import reconstruct

    starts = np.arange(-3 * k - 1, 256 + 2 * k + 1)  # every offset of a 2K + 1 window
    bins = {(int(a), int(b)) for a, b in zip(np.clip(starts, 0, 255), np.clip(starts + 2 * k, 0, 255))}
    bins |= set(zip(bb.binning(k).starts.tolist(), bb.binning(k).ends.tolist()))
    lo, hi = np.array(sorted(bins)).T
    means, log_scales = np.meshgrid(np.linspace(-1.2, 1.2, 25), np.linspace(-7, 2, 19))
    grid = len(means.ravel())
    lo, hi = np.repeat(lo, grid), np.repeat(hi, grid)
    one = (1, 1, 1, 1, len(lo))
    rng = np.random.default_rng(k)
    for params in (
        MixtureParams(np.zeros(one, np.float32), np.tile(means.ravel(), len(lo) // grid).reshape(one).astype(np.float32),
                      np.tile(log_scales.ravel(), len(lo) // grid).reshape(one).astype(np.float32)),
        MixtureParams(rng.normal(0, 5, (1, 3, *one[2:])).astype(np.float32),
                      rng.uniform(-1.5, 1.5, (1, 3, *one[2:])).astype(np.float32),
                      rng.uniform(-9, 3, (1, 3, *one[2:])).astype(np.float32)),
    ):
        pixels = reconstruct(lo[None], hi[None], k, params).reshape(-1).astype(np.int64)
        assert ((pixels >= hi - k) & (pixels <= lo + k)).all()


# -- the guarantee ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", KS)
def test_out_of_domain_images_stay_within_k(codecs: dict[int, ev.NearLosslessCodec], k: int) -> None:
    images = out_of_domain()
    codec = codecs[k]
    data = codec.compress(images)
    back = codec.decompress(data)
    assert back.shape == images.shape and back.dtype == np.uint8
    assert max_error(back, images) <= k
    singles = codec.compress_each(images)
    assert max_error(np.concatenate([codec.decompress(s) for s in singles]), images) <= k
    # A black image: the model predicts black backgrounds, so it comes back (nearly) exact (a
    # white one only within k: the Fashion-MNIST model never saw one).
    assert (back[2] == 0).mean() > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("k", KS)
def test_real_images_stay_within_k_and_backgrounds_are_exact(codecs: dict[int, ev.NearLosslessCodec], k: int) -> None:
    images = fashion_images(200)
    codec = codecs[k]
    back = codec.decompress(codec.compress(images))
    assert max_error(back, images) <= k
    background = images == 0
    # background pixels come back black: measured on these 200 images at K = 32 (the widest bins, the
    # hardest case) 0.9903 with the float fashion-mnist and 0.9896 with the integer default; 0.9994 at K = 8
    assert (back[background] == 0).mean() > 0.985
    singles = codec.compress_each(images[:40])
    assert max_error(np.concatenate([codec.decompress(s) for s in singles]), images[:40]) <= k
    assert np.abs(back.astype(int) - images).max(axis=(1, 2, 3)).max() <= k  # per image, every image


@pytest.mark.slow
@pytest.mark.parametrize(("k", "low", "high"), [(1, 215, 250), (4, 145, 175), (16, 80, 100), (32, 60, 80)])
def test_bytes_per_image_on_real_images(codecs: dict[int, ev.NearLosslessCodec], k: int, low: float, high: float) -> None:
    images = fashion_images(300, start=1000)
    per_image = len(codecs[k].compress(images)) / len(images)
    assert low < per_image < high


@pytest.mark.slow
def test_single_files_code_a_quantized_latent(codecs: dict[int, ev.NearLosslessCodec]) -> None:
    """A single image codes its latent at a lossy level of codec.json (the header's level nibble)."""
    images = fashion_images(20)
    for data in codecs[4].compress_each(images):
        header = fmt.read_header(data)[0]
        assert header.mode == fmt.MODE_NEAR_LOSSLESS and header.quality >= 1 and header.max_error == 4
    sizes = [len(d) for d in codecs[4].compress_each(images)]
    assert 120 < np.mean(sizes) < 220


def test_another_bundle_keeps_the_bound(tiny_model: ev.EdgeVAE) -> None:
    """The bound does not depend on the model being good: the tiny test bundle, 3 levels."""
    from conftest import synthetic_images

    codec = ev.NearLosslessCodec(tiny_model, max_error=3)
    images = np.concatenate([synthetic_images(6, seed=3), out_of_domain()])
    assert max_error(codec.decompress(codec.compress(images)), images) <= 3
    assert max_error(codec.decompress(codec.compress_each(images[:2])[1]), images[1:2]) <= 3


# -- the container --------------------------------------------------------------------------------


def test_container_records_mode_k_and_version(codecs: dict[int, ev.NearLosslessCodec]) -> None:
    images = out_of_domain()
    data = codecs[8].compress(images)
    header = fmt.read_header(data)[0]
    # the default near-lossless bundle is an integer one: exact tables, version 3 (a float bundle's: 2)
    assert codecs[8].model.integer
    assert (header.version, header.mode, header.max_error, header.count) == (fmt.EXACT_VERSION, fmt.MODE_NEAR_LOSSLESS,
                                                                             8, len(images))
    float_data = ev.NearLosslessCodec(ev.load("fashion-mnist", threads=1), max_error=8).compress(images)
    assert fmt.read_header(float_data)[0].version == fmt.NEAR_LOSSLESS_VERSION
    info = codecs[8].describe(data)
    assert info.mode == "near-lossless" and info.max_error == 8 and info.vouched
    # Any codec of the bundle decodes it: the container, not the codec, holds K.
    assert max_error(codecs[1].decompress(data), images) <= 8


def test_damaged_and_truncated_containers_are_container_errors(codecs: dict[int, ev.NearLosslessCodec]) -> None:
    images = out_of_domain()
    codec = codecs[4]
    for data in (codec.compress(images), codec.compress_each(images[:1])[0]):
        for cut in (3, 5, len(data) // 2, len(data) - 1):
            with pytest.raises(ContainerError):
                codec.decompress(data[:cut])
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        with pytest.raises(ContainerError):
            codec.decompress(bytes(flipped))


def _recrc(body: bytes, codec: ev.NearLosslessCodec) -> bytes:
    import struct

    return body + struct.pack(">I", fmt.checksum(body, codec.fingerprint, codec.model.image_shape))


@pytest.mark.parametrize("k", [1, 4, 16, 32])
def test_many_near_certain_images_decode(codecs: dict[int, ev.NearLosslessCodec], k: int) -> None:
    """Flat images cost little more than their latents, less than each bits-back step borrows, so
    a real chain runs dry for many steps: that must never be taken for a forged payload."""
    images = np.concatenate([np.full((40, 1, 28, 28), v, np.uint8) for v in (0, 255)])
    for batch in (images[:40], images):
        data = codecs[k].compress(batch)
        assert max_error(codecs[k].decompress(data), batch) <= k
        assert len(batch) <= len(data)  # within the format's count bound, with room to spare


def test_a_count_beyond_one_image_per_byte_is_refused_before_decoding(codecs: dict[int, ev.NearLosslessCodec]) -> None:
    codec = codecs[4]
    data = codec.compress(out_of_domain())
    header, pos = fmt.read_header(data)
    body = data[:3] + fmt.encode_varint(len(data) + 1) + data[pos - 1 : -4]  # the count, then K onwards
    with pytest.raises(ContainerError, match="claims"):
        codec.decompress(_recrc(body, codec))


def test_forged_fields_are_container_errors(codecs: dict[int, ev.NearLosslessCodec]) -> None:
    codec = codecs[4]
    data = codec.compress(out_of_domain())
    body = data[:-4]
    pos = fmt.read_header(data)[1] - 1  # the K byte
    for k, message in ((0, "maximum error 0"), (33, "maximum error 33")):
        with pytest.raises(ContainerError, match=message):
            codec.decompress(_recrc(body[:pos] + bytes([k]) + body[pos + 1 :], codec))
    # Mode 2 in a version-1 header; a version-2 header holding mode 0.
    for byte1 in (1 << 4 | 2 << 2 | 2, 2 << 4 | 0 << 2 | 2):
        with pytest.raises(ContainerError, match="reserved mode"):
            codec.decompress(_recrc(body[:1] + bytes([byte1]) + body[2:], codec))
    # A latent level in a multi-image container.
    with pytest.raises(ContainerError, match="latent level"):
        codec.decompress(_recrc(body[:2] + bytes([body[2] | 0x10]) + body[3:], codec))
    # A single image's bins check (after the latent), forged behind a valid CRC.
    single = codec.compress_each(out_of_domain()[:1])[0]
    length = single[4]  # the latent's length varint (one byte for a short latent)
    at = 5 + length
    forged = single[:at] + bytes([single[at] ^ 0x01]) + single[at + 1 : -4]
    with pytest.raises(ContainerError, match="does not decode to its check"):
        codec.decompress(_recrc(forged, codec))
    # A later version than any this edgevae knows.
    with pytest.raises(ContainerError, match="newer than this edgevae"):
        codec.decompress(body[:1] + bytes([4 << 4 | data[1] & 0x0F]) + data[2:])


# -- CLI ----------------------------------------------------------------------------------------------


def _run(argv: list[str]) -> object:
    return CliRunner().invoke(main, argv, env={"EDGEVAE_MODEL": None})


@pytest.mark.parametrize("k", [1, 32])
def test_cli_round_trip_keeps_the_bound(tmp_path: Path, k: int) -> None:
    images = out_of_domain()
    np.save(tmp_path / "x.npy", images)
    for extra, out in (([], "a.evz"), (["--split"], "split")):
        result = _run(["compress", str(tmp_path / "x.npy"), "-o", str(tmp_path / out), "--max-error", str(k), *extra])
        assert result.exit_code == 0, result.output
    result = _run(["decompress", str(tmp_path / "a.evz"), "-o", str(tmp_path / "back.npy")])
    assert result.exit_code == 0, result.output
    assert max_error(np.load(tmp_path / "back.npy"), images) <= k
    one = sorted((tmp_path / "split").iterdir())[4]
    result = _run(["decompress", str(one), "-o", str(tmp_path / "one.npy")])
    assert result.exit_code == 0, result.output
    assert max_error(np.load(tmp_path / "one.npy"), images[4:5]) <= k
    result = _run(["info", str(tmp_path / "a.evz")])
    assert result.exit_code == 0 and "near-lossless" in result.output and f"max error {k}" in result.output


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-error", "0"], "from 1 to 32"),
    (["--max-error", "33"], "from 1 to 32"),
    (["--max-error", "2", "--lossless"], "does not combine with --lossless"),
    (["--max-error", "2", "--quality", "best"], "does not combine with --quality"),
])
def test_cli_refuses_bad_max_error_in_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    np.save(tmp_path / "x.npy", out_of_domain()[:2])
    result = _run(["compress", str(tmp_path / "x.npy"), "-o", str(tmp_path / "a.evz"), *argv])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "a.evz").exists()


def test_cli_damaged_file_is_one_line(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", out_of_domain()[:3])
    assert _run(["compress", str(tmp_path / "x.npy"), "-o", str(tmp_path / "a.evz"), "--max-error", "4"]).exit_code == 0
    data = (tmp_path / "a.evz").read_bytes()
    (tmp_path / "cut.evz").write_bytes(data[: len(data) // 2])
    result = _run(["decompress", str(tmp_path / "cut.evz"), "-o", str(tmp_path / "b.npy")])
    assert result.exit_code == 2 and result.output.startswith("Error:") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "b.npy").exists()


# -- high-quality lossy levels -------------------------------------------------------------------------


def test_an_exported_bundle_has_the_standard_high_quality_ladder(tiny_bundle: Path) -> None:
    """A new export writes quality.HIGH_QUALITY_LEVELS into its manifest, so `--quality fine`
    works with a user's own bundle too, within its K."""
    from edgevae.runtime.quality import HIGH_QUALITY_LEVELS

    codec = ev.open_codec("lossy", model=tiny_bundle)
    assert [(q.name, q.max_error) for q in codec.high_levels] == [(q.name, q.max_error) for q in HIGH_QUALITY_LEVELS]
    images = out_of_domain()[:, :, : codec.model.image_shape[1], : codec.model.image_shape[2]]
    images = np.ascontiguousarray(np.broadcast_to(images[:, :1], (len(images), *codec.model.image_shape)))
    top = HIGH_QUALITY_LEVELS[0]
    assert max_error(codec.decompress(codec.compress(images, quality=top.name)), images) <= top.max_error
    for data, image in zip(codec.compress_each(images[:3], quality=top.name), images):
        assert max_error(codec.decompress(data)[0], image) <= top.max_error


def test_lossy_codec_lists_high_quality_levels_after_its_own() -> None:
    codec = ev.open_codec("lossy")
    lossy = [q.name for q in codec.tables.qualities]
    assert codec.qualities[: len(lossy)] == tuple(lossy)
    ks = [q.max_error for q in codec.high_levels]
    assert ks and ks == sorted(ks, reverse=True)
    with pytest.raises(InputError, match="unknown quality"):
        codec.compress(out_of_domain()[:1], quality="ultra")


@pytest.mark.slow
def test_high_quality_levels_reach_32_db_and_rise() -> None:
    codec = ev.open_codec("lossy")
    images = fashion_images(200)
    means = []
    for level in codec.high_levels:
        data = codec.compress(images, quality=level.name)
        assert fmt.read_header(data)[0].max_error == level.max_error  # decoding never needs the table
        back = ev.codec_for_container(data).decompress(data)
        assert max_error(back, images) <= level.max_error
        means.append(float(psnr(images, back).mean()))
    assert max(means) >= 32.0
    assert means == sorted(means)  # higher levels, higher quality
    best = codec.compress(images, quality="best")
    assert means[0] > float(psnr(images, codec.decompress(best)).mean())  # no level below today's best
