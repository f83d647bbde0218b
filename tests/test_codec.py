"""The lossy codec (runtime/codec.py) and its .evz container (runtime/container.py), through the
API and the CLI: round trips, random access, determinism, the integer tables, every error path,
and a small run of the fuzz script (benchmarks/fuzz.py)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import edgevae.runtime as ev
from conftest import one_fast, synthetic_images, write_pngs
from edgevae.runtime import codec as C
from edgevae.runtime import container as fmt
from edgevae.runtime import quality as Q
from edgevae.runtime import rangecode as R
from edgevae.runtime import selection as S
from edgevae.runtime import tables as T
from edgevae.runtime.bundle import read_bundle, sha256_file
from edgevae.runtime.errors import BundleError, ContainerError, EdgeVAEError, InputError
from test_cli import assert_clean_error, edgevae, files_under

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def active_bundle(tiny_bundle: Path, image_folder: Path, tiny_model: ev.EdgeVAE,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_bundle`` with codec tables fitted as if its posteriors were far narrower.

    The shared tiny model is trained for seconds: its latents are nearly collapsed (posterior
    std ~1, means within ~0.01 of 0), so its own exported tables code every image in 0 payload
    bytes (see test_collapsed_latents_cost_nothing). These tables, fitted by the same
    ``fit_tables`` on the same training images, put some 20 steps across that spread: every
    payload then carries real symbols from the real exported encoder, and the tests below see
    real entropy coding, random access and bit-level determinism.
    """
    from edgevae.runtime.images import read_images

    bundle = tmp_path_factory.mktemp("active") / "tiny-active"
    shutil.copytree(tiny_bundle, bundle)
    means, _ = tiny_model.encode(read_images([image_folder], tiny_model.image_shape)[0])
    narrow = np.full_like(means, 2 * np.log(means.std(0).mean() / 20))
    tables = T.fit_tables(means, narrow, source={"data": "tiny image_folder, narrowed posteriors"})
    (bundle / fmt.TABLES_FILE).write_text(json.dumps(tables))
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["codec"]["sha256"] = sha256_file(bundle / fmt.TABLES_FILE)
    (bundle / "model.json").write_text(json.dumps(manifest))
    return bundle


@pytest.fixture(scope="module")
def codec(active_bundle: Path) -> C.Codec:
    return ev.Codec(ev.load(active_bundle))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Images the tiny model was not trained on."""
    return synthetic_images(24, seed=123)


def forge(codec: C.Codec, body: bytes) -> bytes:
    """``body`` + the CRC this model expects: a well-formed-looking container."""
    return body + struct.pack(">I", fmt.checksum(body, codec.fingerprint, codec.model.image_shape))


def reference_quantized(means: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The format's quantization (docs/FORMAT.md) computed independently of runtime/codec.py, in
    exact rational arithmetic: a mean m, clamped to +-LATENT_CLAMP, becomes k = m / step rounded
    to the nearest integer (ties to even), |k| at most the clamp in steps rounded half up; the
    latent is k * step as float32. (Rounding by floor or half away from zero fails this.)"""
    from fractions import Fraction

    out = np.empty(np.shape(means), np.float32)
    for (i, j), m in np.ndenumerate(np.asarray(means, np.float32)):
        step = Fraction(int(steps[j]), 1 << fmt.STEP_BITS)
        clamped = min(max(Fraction(float(m)), -fmt.LATENT_CLAMP), fmt.LATENT_CLAMP)
        limit = int(fmt.LATENT_CLAMP / step + Fraction(1, 2))
        k = min(max(round(clamped / step), -limit), limit)  # round() of a Fraction: ties to even
        out[i, j] = np.float32(float(k * step))
    return out


def expected_latents(codec: C.Codec, images: np.ndarray, quality: str | int | None = None) -> np.ndarray:
    """What the decoder must see: the posterior means, quantized on the level's grid."""
    table = codec.tables.lookup(quality)
    mean, _ = codec.model.encode(images)
    return reference_quantized(mean, table.steps)


# -- public API ------------------------------------------------------------------------------------


def test_public_api() -> None:
    assert {"Codec", "ContainerInfo", "ContainerError"} <= set(ev.__all__)
    assert ev.Codec is C.Codec and issubclass(ev.ContainerError, InputError)


def test_round_trip_decodes_the_quantized_latents(codec: C.Codec, images: np.ndarray) -> None:
    for quality in codec.lossy_qualities:
        data = codec.compress(images, quality=quality)
        out = codec.decompress(data)
        assert out.dtype == np.uint8 and out.shape == images.shape
        # Exactly the decoder's output for the quantized means: nothing else is lost.
        assert np.array_equal(out, codec.model.decode(expected_latents(codec, images, quality)))


def test_best_quality_is_close_to_the_models_reconstruction(codec: C.Codec, images: np.ndarray) -> None:
    recon = codec.model.reconstruct(images).astype(np.int64)
    errors = [np.abs(codec.decompress(codec.compress(images, q)).astype(np.int64) - recon).mean()
              for q in codec.lossy_qualities]
    assert errors[-1] < 3.0, errors  # mean abs pixel difference to the unquantized reconstruction
    assert errors[-1] <= errors[0], errors


def test_collapsed_latents_cost_nothing(tiny_model: ev.EdgeVAE, images: np.ndarray) -> None:
    """The shared tiny model's latents carry ~nothing; its exported tables code them in 0 bytes."""
    own = ev.Codec(tiny_model)
    data = own.compress(images, quality="best")
    assert own.describe(data).payload_bytes <= 2 and len(data) <= 7 + 1 + len(images)
    assert own.decompress(data).shape == images.shape


def test_sizes_grow_with_quality(codec: C.Codec, images: np.ndarray) -> None:
    sizes = [len(codec.compress(images, q)) for q in codec.lossy_qualities]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes
    assert codec.qualities.index(codec.default_quality) == 2 and len(codec.qualities) >= 4


def test_quality_by_name_index_default(codec: C.Codec, images: np.ndarray) -> None:
    assert codec.compress(images[:3], 1) == codec.compress(images[:3], codec.qualities[1])
    assert codec.compress(images[:3], "1") == codec.compress(images[:3], 1)
    assert codec.compress(images[:3]) == codec.compress(images[:3], codec.default_quality)
    for bad in ("huge", 17, -1, True):
        with pytest.raises(InputError, match="unknown quality"):
            codec.compress(images[:1], bad)


def test_single_image_overhead(codec: C.Codec, images: np.ndarray) -> None:
    data = codec.compress(images[0])  # one (C, H, W) image
    info = codec.describe(data)
    assert info.count == 1 and info.overhead_bytes == fmt.HEADER_BYTES + fmt.CRC_BYTES == 7 <= 12
    assert info.bytes == len(data) == info.payload_bytes + 7
    assert info.model_matches and info.checksum_ok and info.quality == codec.default_quality
    assert info.bits_per_pixel == pytest.approx(8 * len(data) / 784)
    assert codec.decompress(data).shape == (1, 1, 28, 28)


def test_random_access(codec: C.Codec, images: np.ndarray) -> None:
    data = codec.compress(images)
    everything = codec.decompress(data)
    for chosen in ([5], [23, 0, 7], [3, 3]):
        assert np.array_equal(codec.decompress(data, indices=chosen), everything[chosen])
    assert codec.decompress(data, indices=[]).shape == (0, 1, 28, 28)
    for bad in ([24], [-1]):
        with pytest.raises(InputError, match="out of range"):
            codec.decompress(data, indices=bad)


def test_random_access_does_not_decode_the_others(codec: C.Codec, images: np.ndarray) -> None:
    original = codec.compress(images)
    parsed = fmt.parse(original)
    assert parsed.offsets[5] > parsed.offsets[4]
    # Make payload 4 invalid (a trailing zero byte) and fix the CRC: the other images still
    # decode, because their payloads are read without touching payload 4.
    body = bytearray(original[:-4])
    body[parsed.offsets[5] - 1] = 0
    forged = forge(codec, bytes(body))
    assert np.array_equal(codec.decompress(forged, indices=[3, 5]), codec.decompress(original, indices=[3, 5]))
    with pytest.raises(ContainerError, match="image 4"):
        codec.decompress(forged, indices=[4])


def test_compress_each_matches_the_multi_image_payloads(codec: C.Codec, images: np.ndarray) -> None:
    multi = fmt.parse(codec.compress(images, "high"))
    singles = codec.compress_each(images, "high")
    assert len(singles) == len(images)
    for i, single in enumerate(singles):
        assert fmt.parse(single).payload(0) == multi.payload(i)
        assert np.array_equal(codec.decompress(single), codec.decompress(codec.compress(images[i], "high")))


def test_progress_is_reported(codec: C.Codec, images: np.ndarray) -> None:
    seen: list[int] = []
    small = ev.Codec(codec.model, batch_size=5)
    data = small.compress(images, progress=seen.append)
    assert sum(seen) == len(images) and len(seen) == 5
    seen.clear()
    small.decompress(data, progress=seen.append)
    assert sum(seen) == len(images)


def test_bad_inputs(codec: C.Codec) -> None:
    with pytest.raises(InputError, match="no images"):
        codec.compress(np.zeros((0, 1, 28, 28), np.uint8))
    with pytest.raises(InputError, match="shape"):
        codec.compress(np.zeros((2, 1, 14, 14), np.uint8))
    with pytest.raises(InputError, match="batch size"):
        ev.Codec(codec.model, batch_size=0)


# -- determinism ---------------------------------------------------------------------------------


def test_same_bytes_across_runs_batch_sizes_and_threads(active_bundle: Path, codec: C.Codec,
                                                         images: np.ndarray) -> None:
    reference = codec.compress(images)
    assert codec.compress(images) == reference
    for batch_size in (1, 7):
        assert ev.Codec(codec.model, batch_size=batch_size).compress(images) == reference
    decoded = codec.decompress(reference)
    for threads in (1, 2):
        other = ev.Codec(ev.load(active_bundle, threads=threads), batch_size=5)
        assert other.compress(images) == reference
        assert np.array_equal(other.decompress(reference), decoded)


@pytest.mark.slow
def test_determinism_on_fashion_mnist(active_bundle: Path) -> None:
    """On real data: the encoder's means are bit-identical across batch sizes and thread counts
    (the guarantee the byte-identical output rests on), and so are containers and pixels."""
    from edgevae.training.data import load_fashion_mnist

    x = load_fashion_mnist().test[:2000]
    one, two = ev.load(active_bundle, threads=1), ev.load(active_bundle, threads=2)
    reference = np.concatenate([one.encode(x[i : i + 64])[0] for i in range(0, len(x), 64)])
    for model, batch in ((one, 1), (one, 2000), (two, 7), (two, 2000)):
        n = 300 if batch == 1 else len(x)
        means = np.concatenate([model.encode(x[i : i + batch])[0] for i in range(0, n, batch)])
        assert np.array_equal(means, reference[:n]), (batch, np.abs(means - reference[:n]).max())
    data = ev.Codec(one, batch_size=64).compress(x)
    assert ev.Codec(two, batch_size=1000).compress(x) == data
    assert np.array_equal(ev.Codec(one).decompress(data), ev.Codec(two, batch_size=999).decompress(data))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


@pytest.fixture(scope="module")
def shipped_rd() -> dict[str, tuple[float, list[float], list[float]]]:
    """Per shipped bundle, on 1,000 real test images: unquantized reconstruction PSNR, then
    mean single-file bytes and PSNR at every quality level."""
    from edgevae.exported import DEFAULT_BUNDLE, DEFAULT_CODEC_BUNDLE
    from edgevae.training.data import load_fashion_mnist

    x = load_fashion_mnist().test[:1000]
    out = {}
    for bundle in (DEFAULT_BUNDLE, DEFAULT_CODEC_BUNDLE):
        codec = ev.Codec(ev.load(bundle))
        sizes = [float(np.mean([len(c) for c in codec.compress_each(x, q)])) for q in codec.lossy_qualities]
        quality = [_psnr(x, codec.decompress(codec.compress(x, q))) for q in codec.lossy_qualities]
        out[bundle.name] = (_psnr(x, codec.model.reconstruct(x)), sizes, quality)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion-mnist", "fashion-mnist-codec"])
def test_fashion_mnist_rate_distortion_bands(name: str, shipped_rd: dict) -> None:
    """Each shipped bundle: the best level is within 0.3 dB of the unquantized reconstruction,
    sizes grow and PSNR does not fall with quality, and single-image files are ~20 bytes, far
    below WebP's smallest (~103 bytes at ~21.8 dB)."""
    recon, sizes, quality = shipped_rd[name]
    assert quality[-1] >= recon - 0.3, (quality, recon)
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes
    assert all(b >= a - 0.05 for a, b in zip(quality, quality[1:])), quality
    balanced = 2
    assert 10 <= sizes[balanced] <= 24, sizes
    assert quality[balanced] >= 20.0, quality
    assert sizes[-1] <= 30 and sizes[0] >= 7, sizes


@pytest.mark.slow
def test_the_codec_bundle_gives_more_psnr_per_byte(shipped_rd: dict) -> None:
    """What fashion-mnist-codec is shipped for: at its default level it beats the ELBO bundle's
    default by >= 0.3 dB for at most 1.5 more bytes, and its best level the ELBO bundle's best
    by >= 0.3 dB in smaller files."""
    _, elbo_sizes, elbo_quality = shipped_rd["fashion-mnist"]
    _, sizes, quality = shipped_rd["fashion-mnist-codec"]
    assert quality[2] >= elbo_quality[2] + 0.3 and sizes[2] <= elbo_sizes[2] + 1.5, (sizes, quality)
    assert quality[-1] >= elbo_quality[-1] + 0.3 and sizes[-1] < elbo_sizes[-1], (sizes, quality, elbo_sizes)


# -- tables ------------------------------------------------------------------------------------------


def test_fit_tables_are_integer_and_normalized(tiny_bundle: Path) -> None:
    tables = json.loads((tiny_bundle / fmt.TABLES_FILE).read_text())
    assert [q["name"] for q in tables["qualities"]] == [level.name for level in Q.QUALITY_LEVELS]
    for q in tables["qualities"]:
        freqs = np.array(q["frequencies"])
        assert freqs.dtype.kind == "i" and freqs.min() >= 1
        assert (freqs.sum(1) == 1 << fmt.FREQUENCY_BITS).all()
        assert all(isinstance(s, int) and s >= fmt.MIN_STEP_UNITS for s in q["steps"])


def test_unused_dimensions_cost_nothing() -> None:
    rng = np.random.default_rng(0)
    n, d = 5000, 6
    means = np.zeros((n, d))
    logvars = np.zeros((n, d))  # dimensions 3..5: posterior = prior N(0, 1), mean ~ 0
    means[:, :3] = rng.standard_normal((n, 3))
    logvars[:, :3] = np.log(0.1**2)
    means[:, 3:] = 0.01 * rng.standard_normal((n, 3))
    tables = T.fit_tables(means, logvars)
    table = T.parse_tables(json.dumps(tables), d).lookup("balanced")
    # Code length of the dimension's usual symbol (its centre, table index 0).
    bits = -np.log2(table.frequencies[:, 0] / (1 << fmt.FREQUENCY_BITS))
    assert (bits[3:] < 0.01).all() and (bits[:3] > 1).all(), bits
    # The same holds for the real coded size: three active dimensions, three free ones.
    payloads = R.encode_payloads(table, means[:500])
    active_only = R.encode_payloads(table, np.concatenate([means[:500, :3], np.zeros((500, 3))], 1))
    assert abs(np.mean([len(p) for p in payloads]) - np.mean([len(p) for p in active_only])) < 0.05


def test_escapes_and_clamp_round_trip(codec: C.Codec) -> None:
    """Means far outside the training range are escaped (or clamped at +-16) and still decode."""
    table = codec.tables.lookup("best")
    rng = np.random.default_rng(1)
    means = rng.standard_normal((50, codec.model.latent_dim)).astype(np.float32)
    means[::3, 0] = 9.0
    means[1::5, -1] = -12.5
    means[2, 1] = 1e6  # clamped to +16
    _, u = table.symbols(means)
    assert (u >= table.escape).any()
    latents = R.decode_payloads(table, R.encode_payloads(table, means))
    assert np.array_equal(latents, reference_quantized(means, table.steps))
    assert latents[2, 1] == pytest.approx(16, abs=float(table.steps[1]) / 2**16)


def test_random_symbols_round_trip_and_payloads_are_canonical(codec: C.Codec) -> None:
    """Many random messages, including near-empty ones: decode exactly, never end in 0x00."""
    rng = np.random.default_rng(2)
    for table in codec.tables.qualities:
        centers = T.dequantize(table.centers, table.steps)
        means = np.where(rng.random((300, len(centers))) < 0.5, centers, rng.normal(0, 2, (300, len(centers))))
        payloads = R.encode_payloads(table, means.astype(np.float32))
        assert all(not p or p[-1] != 0 for p in payloads)
        assert np.array_equal(R.decode_payloads(table, payloads), reference_quantized(means, table.steps))
    assert min(len(p) for p in R.encode_payloads(codec.tables.qualities[0], np.tile(
        T.dequantize(codec.tables.qualities[0].centers, codec.tables.qualities[0].steps), (2, 1)))) <= 1


#: A hand-written table and the payloads version 1 of the format gives for GOLDEN_MEANS. If this
#: test fails after a dependency upgrade (constriction), old files no longer decode: do not
#: update the goldens, pin the dependency or bump the format version.
GOLDEN_TABLE = {"name": "golden", "steps": [4096, 8192, 16384], "centers": [0, 1, -2],
                "frequencies": [[30000, 20000, 10000, 5000, 536], [60000, 2000, 2000, 1000, 536],
                                [16000, 16000, 16000, 16000, 1536]]}
GOLDEN_MEANS = [[0, 0.125, -0.5], [0.0625, -0.125, 0.25], [3.0, 0.5, -1.0], [-0.0625, 0.125, 0.75],
                [0.125, 0.25, -0.25]]
GOLDEN_PAYLOADS = ["", "ea0aa0d1", "fffed3bae17fe3", "bb0961e1", "ffeb111e2c"]


def test_golden_payloads() -> None:
    table = T.QualityTable(0, GOLDEN_TABLE, 3, "golden")
    means = np.array(GOLDEN_MEANS, np.float32)
    index, u = table.symbols(means)
    assert (index == table.escape).sum() == 5  # symbols with zigzag index >= 4 are escaped
    assert [p.hex() for p in R.encode_payloads(table, means)] == GOLDEN_PAYLOADS
    assert R.decode_payloads(table, [bytes.fromhex(p) for p in GOLDEN_PAYLOADS]).tolist() == GOLDEN_MEANS


def test_quantization_uses_exact_integers() -> None:
    steps = np.array([16, 65536, 3 * 4096])
    means = np.array([[0.00048828125, 2.5, -0.3749999]], dtype=np.float32)  # 2**-11 = 2 steps of 2**-12
    k = T.quantize(means, steps)
    assert k.tolist() == [[2, 2, -2]]  # rint(2.5) is 2: half to even
    z = T.dequantize(k, steps)
    assert z.dtype == np.float32 and z.tolist() == [[2**-11, 2.0, -0.375]]
    # Where floor, ceil, truncation or half-away-from-zero would differ from rint (step 1.0):
    cases = np.array([[0.9, -0.4, 1.5, -2.5, 3.5, -0.6, 0.49999997]], dtype=np.float32)
    unit = np.full(cases.shape[1], 65536)
    assert T.quantize(cases, unit).tolist() == [[1, 0, 2, -2, 4, -1, 0]]
    assert np.array_equal(T.dequantize(T.quantize(cases, unit), unit), reference_quantized(cases, unit))
    assert T.unzigzag(T.zigzag(np.arange(-5, 6))).tolist() == list(range(-5, 6))
    assert T.zigzag(np.array([0, -1, 1, -2, 2])).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("edit, phrase", [
    (lambda t: t.update(format="other"), "not edgevae codec tables"),
    (lambda t: t.update(format_version=2), "version 2 is not supported"),
    (lambda t: t.update(latent_dim=99), "latent_dim"),
    (lambda t: t.update(step_bits=8), "step_bits"),
    (lambda t: t.update(default_quality="ultra"), "default_quality"),
    (lambda t: t.update(qualities=[]), "1..16 quality levels"),
    (lambda t: t["qualities"][1].update(name=t["qualities"][0]["name"]), "not unique"),
    (lambda t: t["qualities"][0]["frequencies"][0].__setitem__(0, 0), "must be >= 1"),
    (lambda t: t["qualities"][0]["frequencies"][0].__setitem__(0, 7), "sum to 2**16"),
    (lambda t: t["qualities"][0]["steps"].__setitem__(0, 1), "step out of range"),
    (lambda t: t["qualities"][0].pop("centers"), "malformed"),
    (lambda t: t["qualities"][0].update(steps="x"), "invalid"),
])
def test_bad_tables_are_refused(tiny_bundle: Path, edit, phrase: str) -> None:
    tables = json.loads((tiny_bundle / fmt.TABLES_FILE).read_text())
    edit(tables)
    with pytest.raises(BundleError, match=re.escape(phrase)):
        T.parse_tables(json.dumps(tables), 8)
    with pytest.raises(BundleError, match="unreadable"):
        T.parse_tables("{not json", 8)


def copy_bundle(bundle: Path, target: Path) -> Path:
    shutil.copytree(bundle, target)
    return target


def test_tampered_or_missing_tables(tiny_bundle: Path, tmp_path: Path) -> None:
    tampered = copy_bundle(tiny_bundle, tmp_path / "tampered")
    with open(tampered / fmt.TABLES_FILE, "a") as f:
        f.write(" ")
    with pytest.raises(BundleError, match="codec.json: sha256 does not match"):
        ev.load(tampered)
    missing = copy_bundle(tiny_bundle, tmp_path / "missing")
    (missing / fmt.TABLES_FILE).unlink()
    with pytest.raises(BundleError, match="partial, codec.json is missing"):
        ev.load(missing)
    old = copy_bundle(tiny_bundle, tmp_path / "old")
    manifest = json.loads((old / "model.json").read_text())
    manifest.pop("codec")
    (old / "model.json").write_text(json.dumps(manifest))
    model = ev.load(old)  # a bundle without tables still samples, encodes, decodes...
    with pytest.raises(BundleError, match="no codec tables.*edgevae-train codec-tables"):
        ev.Codec(model)  # ...but cannot compress


def test_refitted_tables_change_the_fingerprint(tiny_bundle: Path, tiny_model: ev.EdgeVAE, tmp_path: Path,
                                                images: np.ndarray) -> None:
    """codec-tables (re)writes codec.json; containers of the old tables no longer decode."""
    from edgevae.training.codec_tables import add_codec_tables

    codec = ev.Codec(tiny_model)
    other = copy_bundle(tiny_bundle, tmp_path / "refit")
    tables = json.loads((other / fmt.TABLES_FILE).read_text())
    # Any change of the file is a new model identity; a refit recomputes this fitted statistic (the
    # levels' names, factors and descriptions are the bundle's own and are kept).
    tables["qualities"][0]["train_bits_per_image"] += 1
    (other / fmt.TABLES_FILE).write_text(json.dumps(tables))
    manifest = json.loads((other / "model.json").read_text())
    manifest["codec"]["sha256"] = sha256_file(other / fmt.TABLES_FILE)
    (other / "model.json").write_text(json.dumps(manifest))
    edited = ev.Codec(ev.load(other))
    assert edited.fingerprint != codec.fingerprint
    data = codec.compress(images[:2])
    if edited.fingerprint[0] >> 4 == codec.fingerprint[0] >> 4:
        with pytest.raises(ContainerError, match="checksum mismatch"):
            edited.decompress(data)
    else:
        with pytest.raises(ContainerError, match="another model"):
            edited.decompress(data)
    # Refitting on the training set restores the exported tables exactly.
    add_codec_tables(other)
    assert (other / fmt.TABLES_FILE).read_bytes() == (tiny_bundle / fmt.TABLES_FILE).read_bytes()
    assert np.array_equal(ev.Codec(ev.load(other)).decompress(data), codec.decompress(data))
    assert read_bundle(other).fingerprint == codec.fingerprint


# -- the container ------------------------------------------------------------------------------------


def test_varints() -> None:
    for value in (0, 1, 127, 128, 300, 2**32 - 1):
        encoded = fmt.encode_varint(value)
        assert fmt.decode_varint(encoded, 0, len(encoded), "x") == (value, len(encoded))
    with pytest.raises(ContainerError, match="over-long"):
        fmt.decode_varint(b"\x81\x00", 0, 2, "count")
    with pytest.raises(ContainerError, match="longer than 5 bytes"):
        fmt.decode_varint(b"\xff" * 6, 0, 6, "count")
    with pytest.raises(ContainerError, match="truncated"):
        fmt.decode_varint(b"\x81", 0, 1, "count")


def test_header_layout(codec: C.Codec, images: np.ndarray) -> None:
    data = codec.compress(images[:3], quality="small")
    prefix = codec.fingerprint[0] >> 4
    assert data[0] == 0xEE
    assert data[1] == 1 << 4 | fmt.MODE_LOSSY << 2 | 0b10  # version 1, lossy, multi, reserved 0
    assert data[2] == 1 << 4 | prefix  # quality index 1, fingerprint nibble
    assert data[3] == 3  # count
    assert fmt.checksum(data[:-4], codec.fingerprint, (1, 28, 28)) == struct.unpack(">I", data[-4:])[0]
    single = codec.compress(images[0], quality="small")
    assert single[1] == 0x10 and single[2] == data[2] and len(single) == 7 + len(fmt.parse(single).payload(0))


#: Ways to damage a valid container -> the phrase its ContainerError must contain. ``forged``
#: kinds recompute the CRC, so they reach the checks behind it.
CONTAINER_DAMAGE_KINDS = (
    "empty", "text", "bad_magic", "future_version", "version_zero", "too_short", "cut_tail",
    "cut_half", "bit_flip_payload", "bit_flip_crc", "appended", "reserved_mode", "count_1e9",
    "count_one", "overlong_count", "lengths_beyond_file", "lossless_mode", "unknown_quality",
    "trailing_zero_payload", "other_model", "multi_bit_single", "reserved_bit",
)


def damage_container(kind: str, codec: C.Codec, multi: bytes, single: bytes) -> tuple[bytes, str]:
    """A damaged variant of the ``multi`` (3 images) or ``single`` container; returns (bytes, phrase)."""
    if kind == "empty":
        return b"", "wrong magic"
    if kind == "text":
        return b"hello, world\n", "wrong magic"
    if kind == "bad_magic":
        return b"\xef" + multi[1:], "wrong magic"
    if kind == "future_version":
        return multi[:1] + bytes([0x40 | multi[1] & 0x0F]) + multi[2:], "version 4 is newer than this edgevae supports (3)"
    if kind == "version_zero":
        return multi[:1] + bytes([multi[1] & 0x0F]) + multi[2:], "unknown format version 0"
    if kind == "too_short":
        return single[:5], "truncated (5 bytes"
    if kind == "cut_tail":
        return multi[:-1], "checksum mismatch"
    if kind == "cut_half":
        return multi[: len(multi) // 2], "damaged or truncated"
    if kind == "bit_flip_payload":
        data = bytearray(multi)
        data[len(data) - 8] ^= 0x10
        return bytes(data), "checksum mismatch"
    if kind == "bit_flip_crc":
        data = bytearray(single)
        data[-1] ^= 1
        return bytes(data), "checksum mismatch"
    if kind == "appended":
        return multi + b"\x00", "checksum mismatch"
    if kind == "reserved_mode":
        return forge(codec, multi[:1] + bytes([multi[1] | 2 << 2]) + multi[2:-4]), "reserved mode 2"
    if kind == "count_1e9":
        return forge(codec, multi[:3] + fmt.encode_varint(10**9) + multi[4:-4]), "claims 1000000000 images"
    if kind == "count_one":
        return forge(codec, multi[:3] + b"\x01" + multi[4:-4]), "fewer than 2 images"
    if kind == "overlong_count":
        return forge(codec, multi[:3] + b"\x83\x00" + multi[4:-4]), "over-long image count"
    if kind == "lengths_beyond_file":
        return forge(codec, multi[:4] + b"\x7f" + multi[5:-4]), "payload lengths exceed the file"
    if kind == "lossless_mode":
        return forge(codec, multi[:1] + bytes([multi[1] | 1 << 2]) + multi[2:-4]), "lossless container"
    if kind == "unknown_quality":
        return forge(codec, multi[:2] + bytes([multi[2] | 0xF0]) + multi[3:-4]), "quality index 15 unknown"
    if kind == "trailing_zero_payload":
        return forge(codec, single[:-4] + b"\x00"), "ends in a zero byte"
    if kind == "other_model":
        return single[:2] + bytes([single[2] ^ 0x0F]) + single[3:], "made by another model"
    if kind == "multi_bit_single":
        return single[:1] + bytes([single[1] | 0x02]) + single[2:], "damaged"
    if kind == "reserved_bit":
        return forge(codec, multi[:1] + bytes([multi[1] | 0x01]) + multi[2:-4]), "reserved header bit"
    raise ValueError(kind)


@pytest.fixture(scope="module")
def specimens(codec: C.Codec, images: np.ndarray) -> tuple[bytes, bytes]:
    return codec.compress(images[:3]), codec.compress(images[3])


@pytest.mark.parametrize("kind", CONTAINER_DAMAGE_KINDS)
def test_damaged_containers_are_refused(kind: str, codec: C.Codec, specimens: tuple[bytes, bytes]) -> None:
    data, phrase = damage_container(kind, codec, *specimens)
    with pytest.raises(ContainerError, match=re.escape(phrase)) as caught:
        codec.decompress(data)
    assert "\n" not in str(caught.value)


def test_every_truncation_and_bit_flip_is_refused(codec: C.Codec, specimens: tuple[bytes, bytes]) -> None:
    for original in specimens:
        for cut in range(len(original)):
            with pytest.raises(ContainerError):
                codec.decompress(original[:cut])
        for bit in range(8 * len(original)):
            data = bytearray(original)
            data[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(ContainerError):
                codec.decompress(bytes(data))


def test_huge_count_does_not_allocate(codec: C.Codec, specimens: tuple[bytes, bytes]) -> None:
    multi = specimens[0]
    for count in (10**9, 2**35 - 1):
        forged = forge(codec, multi[:3] + fmt.encode_varint(count) + multi[4:-4])
        tracemalloc.start()
        with pytest.raises(ContainerError, match="claims"):
            codec.decompress(forged)
        with pytest.raises(ContainerError, match="claims"):
            codec.describe(forged)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1 << 20, peak


def test_checksum_covers_the_full_fingerprint_and_geometry(codec: C.Codec, specimens: tuple[bytes, bytes]) -> None:
    parsed = fmt.parse(specimens[1])
    parsed.verify(codec.fingerprint, (1, 28, 28))
    same_prefix = codec.fingerprint[:1] + bytes(31)
    with pytest.raises(ContainerError, match="checksum mismatch"):
        parsed.verify(same_prefix, (1, 28, 28))
    with pytest.raises(ContainerError, match="checksum mismatch"):
        parsed.verify(codec.fingerprint, (1, 28, 29))


def test_describe_without_a_model(specimens: tuple[bytes, bytes]) -> None:
    info = C.describe(specimens[0])
    assert info.count == 3 and info.mode == "lossy" and info.quality_index == 2
    assert info.model_matches is None and info.checksum_ok is None and info.bits_per_pixel is None
    assert info.to_dict()["bytes"] == len(specimens[0])


# -- CLI ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def png_folder(images: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pngs")
    write_pngs(images[:6], folder)
    return folder


@pytest.mark.parametrize("mode", ["runner", pytest.param("subprocess", marks=pytest.mark.slow)])
def test_cli_round_trip(mode: str, active_bundle: Path, codec: C.Codec, png_folder: Path, tmp_path: Path,
                        images: np.ndarray) -> None:
    out = tmp_path / "all.evz"
    done = edgevae(mode, "compress", png_folder, "-o", out, "--quality", "high", "--json", "--model", active_bundle)
    assert done.code == 0, done
    summary = json.loads(done.stdout)
    size = out.stat().st_size
    assert summary["count"] == 6 and summary["bytes"] == size and summary["quality"] == "high"
    assert summary["bits_per_pixel"] == pytest.approx(8 * size / (6 * 784))
    assert out.read_bytes() == codec.compress(images[:6], "high")  # CLI and API give the same bytes
    done = edgevae(mode, "decompress", out, "-o", tmp_path / "back.npy", "--json", "--model", active_bundle)
    assert done.code == 0, done
    assert np.array_equal(np.load(tmp_path / "back.npy"), codec.decompress(out.read_bytes()))
    assert json.loads(done.stdout)["count"] == 6
    done = edgevae(mode, "info", out, "--model", active_bundle)
    assert done.code == 0 and "6 image(s)" in done.stdout and "quality 3 (high)" in done.stdout
    assert "checksum ok" in done.stdout


def test_cli_split_keeps_names(active_bundle: Path, codec: C.Codec, png_folder: Path, tmp_path: Path,
                               images: np.ndarray) -> None:
    done = edgevae("runner", "compress", png_folder, "-o", tmp_path / "evz", "--split", "--model", active_bundle)
    assert done.code == 0, done
    assert files_under(tmp_path / "evz") == [f"{i:03d}.evz" for i in range(6)]
    assert (tmp_path / "evz" / "002.evz").read_bytes() == codec.compress(images[2])
    again = edgevae("runner", "compress", png_folder, "-o", tmp_path / "evz", "--split", "--model", active_bundle)
    assert_clean_error(again, "already exists", "--force")
    done = edgevae("runner", "decompress", *sorted((tmp_path / "evz").iterdir()), "-o", tmp_path / "pngs",
                   "--model", active_bundle)
    assert done.code == 0, done
    assert files_under(tmp_path / "pngs") == [f"{i:03d}.png" for i in range(6)]


@pytest.mark.slow
def test_cli_index_and_stdin_stdout(active_bundle: Path, codec: C.Codec, png_folder: Path, tmp_path: Path,
                                    images: np.ndarray) -> None:
    data = codec.compress(images[:6])
    (tmp_path / "six.evz").write_bytes(data)
    done = edgevae("runner", "decompress", tmp_path / "six.evz", "--index", "4", "--index", "1", "-o",
                   tmp_path / "two.npy", "--model", active_bundle)
    assert done.code == 0, done
    assert np.array_equal(np.load(tmp_path / "two.npy"), codec.decompress(data, indices=[4, 1]))
    png = (png_folder / "001.png").read_bytes()
    piped = subprocess.run([sys.executable, "-m", "edgevae.runtime", "compress", "-", "-o", "-", "--model",
                            str(active_bundle)], input=png, capture_output=True, timeout=120)
    assert piped.returncode == 0 and piped.stdout == codec.compress(images[1]), piped.stderr
    assert b"compressed 1 image" in piped.stderr
    back = subprocess.run([sys.executable, "-m", "edgevae.runtime", "decompress", "-", "-o", "-", "--model",
                           str(active_bundle)], input=piped.stdout, capture_output=True, timeout=120)
    assert back.returncode == 0, back.stderr
    from io import BytesIO

    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(BytesIO(back.stdout)))[None], codec.decompress(piped.stdout)[0])


# The library refuses every kind (test_damaged_containers_are_refused); the CLI loads the model three
# times per kind, so the fast loop runs one kind through it and the full suite all of them.
@pytest.mark.parametrize("kind", one_fast(CONTAINER_DAMAGE_KINDS))
def test_cli_refuses_damaged_containers(kind: str, active_bundle: Path, codec: C.Codec,
                                        specimens: tuple[bytes, bytes], tmp_path: Path) -> None:
    data, phrase = damage_container(kind, codec, *specimens)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.evz").write_bytes(data)
    for out in ("out.png", "out.npy", "outdir"):
        done = edgevae("runner", "decompress", tmp_path / "in" / "bad.evz", "-o", tmp_path / out,
                       "--model", active_bundle)
        assert_clean_error(done, phrase)
    assert files_under(tmp_path) == ["in", "in/bad.evz"]  # nothing written


def test_cli_errors(active_bundle: Path, png_folder: Path, tmp_path: Path, specimens: tuple[bytes, bytes]) -> None:
    assert_clean_error(edgevae("runner", "compress", png_folder, "-o", tmp_path / "x.evz", "-q", "ultra",
                               "--model", active_bundle), "unknown quality 'ultra'")
    assert_clean_error(edgevae("runner", "compress", png_folder, "-o", "-", "--split", "--model", active_bundle),
                       "--split", "stdout")
    (tmp_path / "a.evz").write_bytes(specimens[0])
    assert_clean_error(edgevae("runner", "decompress", tmp_path / "a.evz", tmp_path / "a.evz", "--index", "0",
                               "-o", tmp_path / "o.png", "--model", active_bundle), "single input")
    assert_clean_error(edgevae("runner", "decompress", tmp_path / "a.evz", "--index", "9", "-o",
                               tmp_path / "o.png", "--model", active_bundle), "index 9 is out of range")
    assert_clean_error(edgevae("runner", "decompress", tmp_path / "nope.evz", "-o", tmp_path / "o.png",
                               "--model", active_bundle), "nope.evz: no such file")
    assert_clean_error(edgevae("runner", "info", tmp_path / "nope.evz", "--model", active_bundle), "no such file")
    (tmp_path / "t.evz").write_text("text")
    assert_clean_error(edgevae("runner", "info", tmp_path / "t.evz", "--model", active_bundle), "wrong magic")
    assert files_under(tmp_path) == ["a.evz", "t.evz"]


def test_cli_info_lists_qualities_and_foreign_containers(active_bundle: Path, specimens: tuple[bytes, bytes],
                                                         tmp_path: Path) -> None:
    done = edgevae("runner", "info", "--model", active_bundle)
    assert done.code == 0 and "balanced (default)" in done.stdout
    foreign = specimens[1][:2] + bytes([specimens[1][2] ^ 0x0F]) + specimens[1][3:]
    (tmp_path / "f.evz").write_bytes(foreign)
    done = edgevae("runner", "info", tmp_path / "f.evz", "--model", active_bundle, "--json")
    # Described, but info cannot vouch for it: exit 2 with one line naming both causes and the fix.
    assert done.code == 2 and json.loads(done.stdout)["model_matches"] is False
    assert json.loads(done.stdout)["vouched"] is False
    assert done.stderr.count("\n") == 1 and "another model" in done.stderr and "damaged" in done.stderr
    assert "--model" in done.stderr


def test_cli_decodes_each_container_with_the_shipped_bundle_that_made_it(active_bundle: Path, png_folder: Path,
                                                                        tmp_path: Path) -> None:
    images = synthetic_images(3, seed=5)
    np.save(tmp_path / "x.npy", images)
    names = ("fashion-mnist-int8", "fashion-mnist")
    for name in names:
        done = edgevae("runner", "compress", tmp_path / "x.npy", "-o", tmp_path / f"{name}.evz", "--model", name)
        assert done.code == 0, done
    containers = [(tmp_path / f"{name}.evz").read_bytes() for name in names]
    assert containers[0] != containers[1]
    done = edgevae("runner", "decompress", *(tmp_path / f"{name}.evz" for name in names), "-o", tmp_path / "back.npy")
    assert done.code == 0, done
    expected = [ev.Codec(ev.load(name)).decompress(data) for name, data in zip(names, containers)]
    assert np.array_equal(np.load(tmp_path / "back.npy"), np.concatenate(expected))
    done = edgevae("runner", "info", tmp_path / "fashion-mnist-int8.evz")
    assert done.code == 0 and "model       fashion-mnist-int8 (" in done.stdout and "fingerprint matches" in done.stdout
    # An explicit --model still decides, and a container of an unshipped bundle needs it.
    assert_clean_error(edgevae("runner", "decompress", tmp_path / "fashion-mnist-int8.evz", "-o", tmp_path / "no.npy",
                               "--model", "fashion-mnist"), "made by another model")
    done = edgevae("runner", "compress", png_folder, "-o", tmp_path / "tiny.evz", "--model", active_bundle)
    assert done.code == 0, done
    assert_clean_error(edgevae("runner", "decompress", tmp_path / "tiny.evz", "-o", tmp_path / "no.npy"),
                       "made by another model")
    assert not (tmp_path / "no.npy").exists()


def test_cli_compress_defaults_to_the_codec_bundle_and_lossless_to_the_model(tmp_path: Path) -> None:
    from edgevae.exported import DEFAULT_BUNDLE, DEFAULT_CODEC_BUNDLE, HQ_CODEC_BUNDLE

    np.save(tmp_path / "x.npy", synthetic_images(2, seed=6))
    made = {}
    for name, extra, env in (("lossy", (), None), ("exact", ("--lossless",), None),
                             ("int8", (), {"EDGEVAE_MODEL": "fashion-mnist-int8"}),
                             ("hq", ("--model", "fashion-mnist-codec-hq", "--quality", "best"), None)):
        done = edgevae("runner", "compress", tmp_path / "x.npy", "-o", tmp_path / f"{name}.evz", *extra, env=env)
        assert done.code == 0, done
        made[name] = S.shipped_bundle_for((tmp_path / f"{name}.evz").read_bytes()).path
    assert made == {"lossy": DEFAULT_CODEC_BUNDLE, "exact": DEFAULT_BUNDLE.parent / "fashion-mnist-exact",
                    "int8": DEFAULT_BUNDLE.parent / "fashion-mnist-int8", "hq": HQ_CODEC_BUNDLE}
    # `edgevae info` names every shipped bundle and which one compress uses.
    done = edgevae("runner", "info")
    assert done.code == 0 and ("shipped     fashion-mnist, fashion-mnist-codec (compress's lossy default), "
                               "fashion-mnist-codec-exact, fashion-mnist-codec-hq, fashion-mnist-context, fashion-mnist-context2, fashion-mnist-context2-exact, "
                                   "fashion-mnist-denoise (denoise's "
                               "default), fashion-mnist-exact (compress --lossless's default; --max-error's default), "
                               "fashion-mnist-int8; pick one with --model NAME") in done.stdout
    # Each container is decoded by the bundle that made it, found by its fingerprint alone.
    done = edgevae("runner", "decompress", tmp_path / "exact.evz", tmp_path / "lossy.evz", tmp_path / "hq.evz",
                   "-o", tmp_path / "back.npy")
    assert done.code == 0, done
    back = np.load(tmp_path / "back.npy")
    assert np.array_equal(back[:2], synthetic_images(2, seed=6)) and back.shape == (6, 1, 28, 28)


def test_codec_tables_command(tiny_bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgevae.training.cli import main as train_cli

    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    result = CliRunner().invoke(train_cli, ["codec-tables", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "balanced" in result.stdout and "bytes/image" in result.stdout
    assert read_bundle(bundle).fingerprint == read_bundle(tiny_bundle).fingerprint
    result = CliRunner().invoke(train_cli, ["codec-tables", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "no such model bundle folder" in result.stderr


def test_codec_tables_step_factors(tiny_bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgevae.training.cli import main as train_cli

    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    result = CliRunner().invoke(train_cli, ["codec-tables", str(bundle), "--step-factors", "16,10,6,4,2.5"])
    assert result.exit_code == 0, result.output
    assert T.bundle_step_factors(read_bundle(bundle)) == [16, 10, 6, 4, 2.5]
    assert "step x16" in result.stdout
    assert read_bundle(bundle).fingerprint != read_bundle(tiny_bundle).fingerprint
    # A refit without the option keeps the bundle's own levels.
    assert CliRunner().invoke(train_cli, ["codec-tables", str(bundle)]).exit_code == 0
    assert T.bundle_step_factors(read_bundle(bundle)) == [16, 10, 6, 4, 2.5]
    before = (bundle / fmt.TABLES_FILE).read_bytes()
    for bad, phrase in (("8,5,3", "need 5 step factors"), ("8,5,5,2,1", "strictly decreasing"),
                        ("8,5,3,2,0", "positive"), ("8,x,3,2,1", "not a list of numbers")):
        result = CliRunner().invoke(train_cli, ["codec-tables", str(bundle), "--step-factors", bad])
        assert result.exit_code == 2 and phrase in result.stderr, (bad, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert (bundle / fmt.TABLES_FILE).read_bytes() == before


def test_quality_levels() -> None:
    assert Q.quality_levels(None) == Q.QUALITY_LEVELS
    levels = Q.quality_levels([9, 7, 5, 3, 1])
    assert [q.name for q in levels] == [q.name for q in Q.QUALITY_LEVELS]
    assert [q.step_factor for q in levels] == [9, 7, 5, 3, 1]
    for bad in ([1, 2, 3, 4, 5], [5, 4, 3, 2], [5, 4, 3, 2, float("nan")], [5, 4, 3, 2, -1]):
        with pytest.raises(ValueError):
            Q.quality_levels(bad)


# -- fuzzing ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fuzz_script_small_run(active_bundle: Path, tmp_path: Path) -> None:
    """benchmarks/fuzz.py on 3,000 cases: no crash, no hang, no undetected corruption."""
    report = tmp_path / "fuzz.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz.py"), "--model", str(active_bundle),
                           "--cases", "3000", "--seed", "7", "--json", str(report)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())
    assert result["cases"] == 3000
    assert result["crashes"] == 0 and result["hangs"] == 0 and result["undetected_corruptions"] == 0, result
    assert result["rejected"] > 2000
    assert set(result["by_kind"]) >= {"bit_flip", "truncate", "random_bytes", "forged_count_1e9"}
    assert result["huge_count_peak_bytes"] < 1 << 20


def test_errors_are_typed(codec: C.Codec) -> None:
    for data in (b"\xee", b"\xee\x01\x00\x00\x00\x00\x00"):
        with pytest.raises(EdgeVAEError):
            codec.decompress(data)
