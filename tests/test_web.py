"""The JavaScript package (web/) against Python: containers made by either side decode to the
same pixels and are byte-identical, damaged containers give the same errors, the Node command
line, the browser page in headless Chromium, and README's JavaScript and C snippets.

Needs Node.js and web/node_modules (`make web-deps`, which `make test` runs first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import one_fast
from edgevae.runtime import container as fmt
from edgevae.runtime import contract
from edgevae.runtime import load
from edgevae.runtime.bundle import read_manifest, shipped_bundles
from edgevae.runtime.codec import Codec, LosslessCodec, NearLosslessCodec
from edgevae.runtime.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
#: Every shipped bundle with codec tables: `edgevae compress --model NAME` works for each.
CODEC_BUNDLES = [name for name, path in shipped_bundles().items() if read_manifest(path).codec_path is not None]
#: Real Fashion-MNIST test images in the parity run (plus the out-of-domain ones).
REAL_IMAGES = 256


def node_bin() -> str:
    node = shutil.which("node")
    assert node, "Node.js is not installed: `make web-deps` (or apt-get install nodejs) sets it up"
    assert (WEB / "node_modules" / "onnxruntime-node").is_dir(), "web/node_modules is missing: run `make web-deps`"
    return node


def run_node(*args: str | Path, timeout: float = 300, check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run([node_bin(), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"node {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


# -- images -----------------------------------------------------------------------------------


def _photo(path: Path, box: tuple[float, float, float, float] | None, invert: bool = False) -> np.ndarray:
    from PIL import Image, ImageOps

    image = Image.open(path).convert("L")
    if box:
        w, h = image.size
        image = image.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    image = image.resize((28, 28), Image.Resampling.LANCZOS)
    if invert:
        image = ImageOps.invert(image)
    return np.asarray(image)[None]


def out_of_domain_images() -> np.ndarray:
    """uint8 (N, 1, 28, 28): noise, flat and extreme images, patterns and resized photos."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (1, 28, 28)) for _ in range(6)]
    images += [(rng.random((1, 28, 28)) < p) * 255 for p in (0.02, 0.1, 0.5, 0.9)]
    images += [np.full((1, 28, 28), v) for v in (0, 1, 128, 254, 255)]
    yy, xx = np.mgrid[:28, :28]
    images += [((yy // p + xx // p) % 2 * 255)[None] for p in (1, 2, 4, 7)]
    images += [(xx * 255 // 27)[None], (yy * 255 // 27)[None], ((xx + yy) * 255 // 54)[None], (255 - xx * 255 // 27)[None]]
    images += [(((xx - 14) ** 2 + (yy - 14) ** 2 < r * r) * 255)[None] for r in (4, 9, 13)]
    try:  # photos that ship with matplotlib (a test dependency): resized like any user photo
        from matplotlib import get_data_path

        samples = Path(get_data_path()) / "sample_data"
        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
            for box in (None, (0.25, 0.1, 0.75, 0.6), (0.0, 0.5, 0.5, 1.0)):
                images.append(_photo(samples / name, box))
                images.append(_photo(samples / name, box, invert=True))
    except ImportError:
        pass
    return np.stack([np.asarray(i, dtype=np.uint8) for i in images])


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """A few hundred images: real Fashion-MNIST test images (spread over the set) and out-of-domain ones."""
    from edgevae.training.data import load_fashion_mnist

    test = load_fashion_mnist().test
    real = test[:: len(test) // REAL_IMAGES][:REAL_IMAGES]
    return np.concatenate([real, out_of_domain_images()])


# -- byte and pixel parity over every quality of every codec bundle ---------------------------


@pytest.fixture(scope="module")
def parity(images: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Python makes a container per bundle and quality and decodes it; Node decodes Python's and
    compresses the same images. Returns every pair of results to compare."""
    work = tmp_path_factory.mktemp("parity")
    np.save(work / "images.npy", images)
    np.save(work / "few.npy", images[:5])
    jobs, cases = [], []
    for name in CODEC_BUNDLES:
        bundle = shipped_bundles()[name]
        codec = Codec(load(bundle, threads=1))
        for q in range(len(codec.lossy_qualities)):
            data = codec.compress(images, quality=q)
            stem = work / f"{name}-{q}"
            stem.with_suffix(".evz").write_bytes(data)
            jobs.append({"op": "decode", "bundle": str(bundle), "container": str(stem.with_suffix(".evz")),
                         "out": f"{stem}.js.npy"})
            jobs.append({"op": "encode", "bundle": str(bundle), "images": str(work / "images.npy"), "quality": q,
                         "out": f"{stem}.js.evz"})
            cases.append({"bundle": name, "quality": q, "python": data, "pixels": codec.decompress(data),
                          "js_pixels": Path(f"{stem}.js.npy"), "js_container": Path(f"{stem}.js.evz")})
        # Single-image containers (compress --split) and random access into a multi-image one.
        singles = codec.compress_each(images[:5])
        jobs.append({"op": "encode", "bundle": str(bundle), "images": str(work / "few.npy"), "split": True,
                     "quality": None, "out": str(work / f"{name}-split")})
        indices = [7, 0, 7, len(images) - 1]
        first = work / f"{name}-0.evz"
        jobs.append({"op": "decode", "bundle": str(bundle), "container": str(first), "indices": indices,
                     "out": str(work / f"{name}-indexed.js.npy")})
        cases.append({"bundle": name, "singles": singles, "split": work / f"{name}-split",
                      "indexed": codec.decompress(first.read_bytes(), indices=indices),
                      "js_indexed": work / f"{name}-indexed.js.npy"})
    (work / "jobs.json").write_text(json.dumps(jobs))
    run_node(WEB / "test" / "parity.mjs", work / "jobs.json", work / "results.json", timeout=600)
    results = json.loads((work / "results.json").read_text())
    assert all(r["error"] is None for r in results), [r for r in results if r["error"]]
    return {"cases": cases, "images": images}


def test_every_shipped_codec_bundle_is_covered() -> None:
    assert {"fashion-mnist", "fashion-mnist-codec", "fashion-mnist-codec-hq"} <= set(CODEC_BUNDLES)


@pytest.mark.slow
def test_node_decodes_python_containers_to_identical_pixels(parity: dict) -> None:
    checked = 0
    for case in parity["cases"]:
        if "pixels" not in case:
            continue
        js = np.load(case["js_pixels"])
        differ = int((js != case["pixels"]).sum())
        assert js.shape == case["pixels"].shape
        assert differ == 0, f"{case['bundle']} quality {case['quality']}: {differ} pixels differ"
        checked += len(js)
    assert checked >= 5 * len(CODEC_BUNDLES) * REAL_IMAGES


@pytest.mark.slow
def test_node_containers_are_byte_identical_to_python(parity: dict) -> None:
    for case in parity["cases"]:
        if "python" in case:
            js = case["js_container"].read_bytes()
            assert js == case["python"], f"{case['bundle']} quality {case['quality']}: containers differ"


@pytest.mark.slow
def test_escapes_are_exercised(parity: dict) -> None:
    """Out-of-domain images must reach the escape path, or its parity is untested."""
    from edgevae.runtime.tables import load_tables

    bundle = read_manifest(shipped_bundles()["fashion-mnist-codec"])
    tables = load_tables(bundle)
    means = load(bundle.path, threads=1).encode(parity["images"])[0]
    escapes = sum(int((t.symbols(means)[0] == t.escape).sum()) for t in tables.qualities)
    assert escapes > 0


@pytest.mark.slow
def test_single_image_containers_and_random_access(parity: dict) -> None:
    for case in parity["cases"]:
        if "singles" not in case:
            continue
        for i, data in enumerate(case["singles"]):
            assert Path(f"{case['split']}.{i}").read_bytes() == data, f"{case['bundle']}: single container {i} differs"
        assert np.array_equal(np.load(case["js_indexed"]), case["indexed"]), case["bundle"]


def test_node_model_interpolates_as_python_and_samples_by_seed(images: np.ndarray, tmp_path: Path) -> None:
    """interpolate() follows Python's float32 arithmetic (same pixels); sample() is seeded by its own
    generator (numpy's stream is not required): the same seed repeats, another seed differs, and
    temperature 0 decodes the prior's image of the zero noise (the zero latent without a learned
    prior) as Python does."""
    name = "fashion-mnist"
    bundle = shipped_bundles()[name]
    np.save(tmp_path / "pair.npy", images[[3, 40]])
    jobs = [{"op": "interpolate", "bundle": str(bundle), "images": str(tmp_path / "pair.npy"), "steps": 9,
             "out": str(tmp_path / "blend.npy")}]
    for label, seed, temperature in (("a", 1, 1.0), ("b", 1, 1.0), ("c", 2, 1.0), ("zero", 5, 0.0)):
        jobs.append({"op": "sample", "bundle": str(bundle), "n": 6, "seed": seed, "temperature": temperature,
                     "out": str(tmp_path / f"{label}.npy")})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run_node(WEB / "test" / "parity.mjs", tmp_path / "jobs.json", tmp_path / "results.json")
    model = load(bundle, threads=1)
    assert np.array_equal(np.load(tmp_path / "blend.npy"), model.interpolate(images[3], images[40], steps=9))
    a, b, c = (np.load(tmp_path / f"{x}.npy") for x in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c) and a.std() > 20
    assert np.array_equal(np.load(tmp_path / "zero.npy"), model.sample(6, temperature=0.0))


# -- the same errors for damaged and wrong-model containers -------------------------------------


def _recrc(body: bytes, fingerprint: bytes) -> bytes:
    return body + fmt.checksum(body, fingerprint, (1, 28, 28)).to_bytes(4, "big")


def _damaged(codec: Codec, other: Codec, images: np.ndarray) -> list[tuple[str, bytes, Codec]]:
    """Named damaged containers (and the codec to decode them with)."""
    fp = codec.fingerprint
    multi = codec.compress(images[:6], quality=2)
    single = codec.compress(images[:1], quality=4)
    body = multi[:-4]
    cases = [
        ("empty", b"", codec), ("one byte", b"\xee", codec), ("wrong magic", b"\x00" + multi[1:], codec),
        ("text", b"hello world, not a container", codec),
        ("newer version", bytes([0xEE, 0x40]) + multi[2:], codec),
        ("old version", bytes([0xEE, 0x00]) + multi[2:], codec),
        ("truncated header", multi[:5], codec), ("truncated", multi[:-9], codec),
        ("reserved mode", _recrc(bytes([0xEE, multi[1] | 0x0C]) + body[2:], fp), codec),
        ("reserved bit", _recrc(bytes([0xEE, multi[1] | 0x01]) + body[2:], fp), codec),
        ("flipped payload bit", multi[:20] + bytes([multi[20] ^ 4]) + multi[21:], codec),
        ("flipped crc", multi[:-1] + bytes([multi[-1] ^ 1]), codec),
        ("huge count", _recrc(bytes([0xEE, multi[1], multi[2], 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) + body[4:], fp), codec),
        ("count one", _recrc(bytes([0xEE, multi[1], multi[2], 0x01]) + body[4:], fp), codec),
        ("over-long count", _recrc(bytes([0xEE, multi[1], multi[2], 0x86, 0x00]) + body[4:], fp), codec),
        ("lengths past the end", _recrc(body[:4] + bytes([0x7F] * 5) + body[9:], fp), codec),
        ("unknown quality", _recrc(bytes([0xEE, single[1], 0xF0 | single[2] & 0x0F]) + single[3:-4], fp), codec),
        ("payload ends in zero", _recrc(single[:-4] + b"\0", fp), codec),
        ("wrong model", multi, other),
        ("lossless", LosslessCodec(codec.model).compress(images[:2]), codec) if codec.model.bundle.name == "fashion-mnist" else
        ("lossless header", _recrc(bytes([0xEE, 0x14, fp[0] >> 4]) + b"\x10\x01" + bytes(8), fp), codec),
    ]
    # Payload damage behind a valid CRC reaches the range decoder: invalid data, out-of-range symbols.
    rng = np.random.default_rng(3)
    for trial in range(120):
        data = bytearray(single[:-4])
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(3, len(data)))
            data[pos] = int(rng.integers(0, 256))
        if trial % 3 == 0:
            data += bytes(rng.integers(0, 256, int(rng.integers(1, 6))).astype(np.uint8))
        cases.append((f"payload damage {trial}", _recrc(bytes(data), fp), codec))
    # Hand-picked payloads that reach the range decoder's own errors: a point past the table's end
    # (all-ones) and escapes that decode to symbols out of range, found by a seeded search.
    from edgevae.runtime.rangecode import decode_payloads

    table = codec.tables.qualities[single[2] >> 4]
    cases.append(("all-ones payload", _recrc(single[:3] + b"\xff" * 9, fp), codec))
    found: dict[str, int] = {}
    for trial in range(4000):
        payload = bytes([int(rng.integers(0xF0, 0x100))]) + bytes(rng.integers(0, 256, int(rng.integers(2, 12))).astype(np.uint8))
        if payload.endswith(b"\0"):
            continue
        try:
            decode_payloads(table, [payload])
            kind = "decodes"
        except InputError as e:
            kind = re.sub(r"\d+", "#", str(e))
        if found.get(kind, 0) < 4:
            found[kind] = found.get(kind, 0) + 1
            cases.append((f"searched payload {trial} ({kind})", _recrc(single[:3] + payload, fp), codec))
    return cases


@pytest.mark.parametrize("name", one_fast(["fashion-mnist-codec", "fashion-mnist"]))
def test_damaged_containers_give_the_same_errors(name: str, images: np.ndarray, tmp_path: Path) -> None:
    codec = Codec(load(shipped_bundles()[name], threads=1))
    other_name = "fashion-mnist-codec-hq" if name != "fashion-mnist-codec-hq" else "fashion-mnist-codec"
    other = Codec(load(shipped_bundles()[other_name], threads=1))
    cases = _damaged(codec, other, images)
    jobs, expected = [], []
    for i, (label, data, decoder) in enumerate(cases):
        (tmp_path / f"{i}.evz").write_bytes(data)
        jobs.append({"op": "decode", "bundle": str(decoder.model.bundle.path), "container": str(tmp_path / f"{i}.evz"),
                     "out": str(tmp_path / f"{i}.npy")})
        try:
            expected.append(("pixels", decoder.decompress(data)))
        except InputError as e:
            expected.append(("error", str(e)))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run_node(WEB / "test" / "parity.mjs", tmp_path / "jobs.json", tmp_path / "results.json")
    results = json.loads((tmp_path / "results.json").read_text())
    kinds = set()
    for i, ((label, _, _), (kind, value), result) in enumerate(zip(cases, expected, results)):
        if label.startswith("lossless"):
            # Python decodes mode 1 (or finds its payload damaged); the JavaScript package refuses it by name.
            assert result["error"] and "lossless containers (mode 1)" in result["error"], label
            continue
        if kind == "error":
            message = value
            assert result["error"] == message, f"{label}: Python says {message!r}, JavaScript {result['error']!r}"
            kinds.add(re.sub(r"\d+", "#", message))
        else:
            assert result["error"] is None, f"{label}: Python decodes it, JavaScript says {result['error']!r}"
            assert np.array_equal(np.load(tmp_path / f"{i}.npy"), value), label
    # The damage reached the decoder's own error paths, not only the framing checks.
    assert any("AssertionError" in k or "out of range" in k for k in kinds), kinds


# -- lossless and near-lossless containers of an integer bundle (exact tables) --------------------

#: The shipped integer bundle (model.json "arithmetic": "integer"), when it exists.
EXACT_BUNDLE = ROOT / "exported" / "fashion-mnist-exact"
#: Maximum errors of the near-lossless parity containers.
EXACT_MAX_ERRORS = (1, 4, 32)


@pytest.fixture(scope="module")
def integer_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$EDGEVAE_TEST_INTEGER_BUNDLE, else the shipped integer bundle; until it ships, the float
    fashion-mnist's graphs wrapped in the integer contract (tests/test_exact_bundle.py): the same
    coders and tables, float inside."""
    if os.environ.get("EDGEVAE_TEST_INTEGER_BUNDLE"):
        return Path(os.environ["EDGEVAE_TEST_INTEGER_BUNDLE"])
    if (EXACT_BUNDLE / "model.json").is_file():
        return EXACT_BUNDLE
    from test_exact_bundle import wrap_integer_bundle

    return wrap_integer_bundle(ROOT / "exported" / "fashion-mnist", tmp_path_factory.mktemp("integer") / "fashion-mnist-exact")


def _exact_cases(model, images: np.ndarray) -> list[dict]:
    """Python's lossless and near-lossless containers of an integer bundle: every image in one file,
    one image alone, and single-image files (compress_each) of three images."""
    cases = [{"label": "lossless", "codec": LosslessCodec(model), "images": images},
             {"label": "lossless one", "codec": LosslessCodec(model), "images": images[:1]}]
    for k in EXACT_MAX_ERRORS:
        codec = NearLosslessCodec(model, max_error=k)
        cases.append({"label": f"near-lossless K={k}", "codec": codec, "images": images, "max_error": k})
    codec = NearLosslessCodec(model, max_error=4)
    cases.append({"label": "near-lossless K=4 split", "codec": codec, "images": images[:3], "max_error": 4, "split": True})
    cases.append({"label": "lossless split", "codec": LosslessCodec(model), "images": images[:3], "split": True})
    if model.bundle.codec_path is not None:  # its lossy codec: the decoder on integer latents
        codec = Codec(model)
        cases += [{"label": f"lossy quality {q}", "codec": codec, "images": images, "quality": q, "lossy": True}
                  for q in range(len(codec.lossy_qualities))]
    for case in cases:
        codec, batch = case["codec"], case["images"]
        if case.get("lossy"):
            case["python"] = [codec.compress(batch, quality=case["quality"])]
            case["pixels"] = [codec.decompress(case["python"][0])]
            continue
        case["python"] = codec.compress_each(batch) if case.get("split") else [codec.compress(batch)]
        case["pixels"] = [codec.decompress(data) for data in case["python"]]
    return cases


@pytest.fixture(scope="module")
def exact_parity(images: np.ndarray, integer_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Node decodes Python's lossless / near-lossless containers of the integer bundle and writes
    its own from the same images; returns both sides."""
    work = tmp_path_factory.mktemp("exact")
    model = load(integer_bundle, threads=1)
    cases = _exact_cases(model, images)
    jobs = []
    for n, case in enumerate(cases):
        np.save(work / f"{n}.npy", case["images"])
        case["js_pixels"], case["js_containers"] = [], []
        for j, data in enumerate(case["python"]):
            (work / f"{n}-{j}.evz").write_bytes(data)
            jobs.append({"op": "decode", "bundle": str(integer_bundle), "container": str(work / f"{n}-{j}.evz"),
                         "out": str(work / f"{n}-{j}.js.npy")})
            case["js_pixels"].append(work / f"{n}-{j}.js.npy")
        split = bool(case.get("split"))
        jobs.append({"op": "encode", "bundle": str(integer_bundle), "images": str(work / f"{n}.npy"),
                     "quality": case.get("quality"), "lossless": "max_error" not in case and not case.get("lossy"),
                     "max_error": case.get("max_error"), "split": split, "out": str(work / f"{n}.js.evz")})
        case["js_containers"] = ([work / f"{n}.js.evz.{j}" for j in range(len(case["python"]))] if split
                                 else [work / f"{n}.js.evz"])
    (work / "jobs.json").write_text(json.dumps(jobs))
    run_node(WEB / "test" / "parity.mjs", work / "jobs.json", work / "results.json", timeout=900)
    results = json.loads((work / "results.json").read_text())
    assert all(r["error"] is None for r in results), [r for r in results if r["error"]]
    return {"cases": cases, "bundle": integer_bundle}


def test_node_decodes_python_lossless_and_near_lossless_of_an_integer_bundle(exact_parity: dict) -> None:
    """0 pixels differ between Node's and Python's decoding; lossless gives the input back, and
    near-lossless keeps every pixel within its K (and the bundle's lossy levels, if it has codec.json,
    decode to Python's pixels too)."""
    for case in exact_parity["cases"]:
        batch = case["images"]
        for j, (want, got_path) in enumerate(zip(case["pixels"], case["js_pixels"])):
            got = np.load(got_path)
            assert got.shape == want.shape and int((got != want).sum()) == 0, f"{case['label']} #{j}: pixels differ"
            if case.get("lossy"):
                continue
            original = batch[j : j + 1] if case.get("split") else batch
            error = int(np.abs(got.astype(int) - original.astype(int)).max())
            assert error <= case.get("max_error", 0), f"{case['label']}: max error {error}"


def test_node_writes_python_bytes_for_an_integer_bundle(exact_parity: dict) -> None:
    """Node's lossless and near-lossless containers of the same images are byte-identical to Python's."""
    for case in exact_parity["cases"]:
        for want, got_path in zip(case["python"], case["js_containers"]):
            assert got_path.read_bytes() == want, f"{case['label']}: Node's container differs from Python's"


def _damaged_exact(model, images: np.ndarray) -> list[tuple[str, bytes]]:
    """Named damaged lossless / near-lossless containers of an integer bundle (valid CRC unless named)."""
    fp = model.bundle.fingerprint
    recrc = lambda body: body + fmt.checksum(body, fp, model.image_shape).to_bytes(4, "big")  # noqa: E731
    lossless = LosslessCodec(model).compress(images[:40])
    near = NearLosslessCodec(model, max_error=4).compress(images[:40])
    one = NearLosslessCodec(model, max_error=4).compress(images[:1])
    body = lossless[:-4]
    # header: ee, flags, nibble|prefix, count varint (40 = 1 byte), then the payload: b, C, checksum, chain
    cases = [
        ("float version", recrc(bytes([0xEE, 0x16]) + body[2:])),
        ("quality in lossless", recrc(body[:2] + bytes([0x50 | body[2] & 0x0F]) + body[3:])),
        ("bucket bits 5", recrc(body[:4] + b"\x05" + body[5:])),
        ("bucket bits 17", recrc(body[:4] + b"\x11" + body[5:])),
        ("bucket bits 12", recrc(body[:4] + b"\x0c" + body[5:])),
        ("two chains", recrc(body[:5] + b"\x02" + body[6:])),
        ("forged count", recrc(body[:3] + bytes([0x7F]) + body[4:])),
        ("truncated payload", recrc(body[:12])),
        ("checksum", recrc(body[:6] + bytes([body[6] ^ 1]) + body[7:])),
        ("zero top word", recrc(body + b"\0\0\0\0")),
        ("chopped chain", recrc(body[: len(body) - 40])),
        ("near-lossless K=0", recrc(near[:4] + b"\x00" + near[5:-4])),
        ("near-lossless latent level in multi", recrc(near[:2] + bytes([0x10 | near[2] & 0x0F]) + near[3:-4])),
    ]
    rng = np.random.default_rng(21)
    for trial in range(30):
        data = bytearray(body if trial % 2 else one[:-4])
        for _ in range(int(rng.integers(1, 3))):
            pos = int(rng.integers(10, len(data)))
            data[pos] = int(rng.integers(0, 256))
        cases.append((f"payload damage {trial}", recrc(bytes(data))))
    return cases


def test_damaged_exact_containers_give_the_same_errors(integer_bundle: Path, images: np.ndarray, tmp_path: Path) -> None:
    """Forged headers and damaged payloads of an integer bundle's lossless and near-lossless files:
    Node stops with Python's message (or, rarely, both decode the same pixels)."""
    model = load(integer_bundle, threads=1)
    cases = _damaged_exact(model, images)
    jobs, expected = [], []
    for i, (label, data) in enumerate(cases):
        (tmp_path / f"{i}.evz").write_bytes(data)
        jobs.append({"op": "decode", "bundle": str(integer_bundle), "container": str(tmp_path / f"{i}.evz"),
                     "out": str(tmp_path / f"{i}.npy")})
        codec = NearLosslessCodec(model, max_error=4) if data[1] >> 2 & 3 == 2 else LosslessCodec(model)
        try:
            expected.append(("pixels", codec.decompress(data)))
        except InputError as e:
            expected.append(("error", str(e)))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run_node(WEB / "test" / "parity.mjs", tmp_path / "jobs.json", tmp_path / "results.json", timeout=600)
    results = json.loads((tmp_path / "results.json").read_text())
    for i, ((label, _), (kind, value), result) in enumerate(zip(cases, expected, results)):
        if kind == "error":
            assert result["error"] == value, f"{label}: Python says {value!r}, JavaScript {result['error']!r}"
        else:
            assert result["error"] is None, f"{label}: Python decodes it, JavaScript says {result['error']!r}"
            assert np.array_equal(np.load(tmp_path / f"{i}.npy"), value), label


def test_float_bundles_lossless_files_stay_python_only(images: np.ndarray, tmp_path: Path) -> None:
    """A float bundle's lossless (version 1) and near-lossless (version 2) files are refused by name;
    so is writing them in JavaScript."""
    model = load(shipped_bundles()["fashion-mnist"], threads=1)
    files = {"lossless containers (mode 1) are decoded by Python edgevae only": LosslessCodec(model).compress(images[:2]),
             "near-lossless containers (mode 2) are decoded by Python edgevae only":
                 NearLosslessCodec(model, max_error=4).compress(images[:2])}
    jobs = []
    for i, data in enumerate(files.values()):
        (tmp_path / f"{i}.evz").write_bytes(data)
        jobs.append({"op": "decode", "bundle": str(shipped_bundles()["fashion-mnist"]), "container": str(tmp_path / f"{i}.evz"),
                     "out": str(tmp_path / f"{i}.npy")})
    np.save(tmp_path / "two.npy", images[:2])
    jobs.append({"op": "encode", "bundle": str(shipped_bundles()["fashion-mnist"]), "images": str(tmp_path / "two.npy"),
                 "quality": None, "lossless": True, "out": str(tmp_path / "x.evz")})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run_node(WEB / "test" / "parity.mjs", tmp_path / "jobs.json", tmp_path / "results.json")
    results = json.loads((tmp_path / "results.json").read_text())
    for message, result in zip(files, results):
        assert result["error"] and message in result["error"], result
    assert "computes in floating point" in results[-1]["error"] and "integer bundle" in results[-1]["error"]


def test_javascript_exact_tables_and_ans_coder_match_python() -> None:
    """web/test/exact.test.mjs and ans.test.mjs: the exact table set (vectors made by the reference,
    runtime/exact.py) and the ANS coder (vectors made by constriction) in JavaScript."""
    result = run_node("--test", WEB / "test" / "exact.test.mjs", WEB / "test" / "ans.test.mjs", check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"# pass [1-9]", result.stdout) and "# fail 0" in result.stdout


def test_format_md_exact_examples_in_javascript() -> None:
    """FORMAT.md §7.8's worked examples (tables, renorm, the ANS walk, one pixel, one latent
    dimension) recomputed by web/: the spec alone is enough to build the exact set."""
    result = run_node("--test", WEB / "test" / "format-exact.test.mjs", check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"# pass [1-9]", result.stdout) and "# fail 0" in result.stdout


def test_exact_vectors_are_the_references_own() -> None:
    """The committed vectors are what runtime/exact.py makes today (a change there must update them)."""
    from edgevae.runtime import exact

    vectors = json.loads((WEB / "test" / "exact-vectors.json").read_text())
    assert vectors["fingerprints"]["16"] == exact.fingerprint(16)
    assert vectors["table_crcs"] == exact.table_crcs(16)


# -- the Node command line ----------------------------------------------------------------------


def evz(*args: str | Path) -> subprocess.CompletedProcess:
    return run_node(WEB / "evz.mjs", *args, check=False, timeout=120)


@pytest.mark.slow
def test_cli_compress_and_decompress_match_python(images: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", images[:12])
    codec = Codec(load(shipped_bundles()["fashion-mnist-codec"], threads=1))
    result = evz("compress", tmp_path / "in.npy", tmp_path / "out.evz", "--bundle", "fashion-mnist-codec", "--quality", "high")
    assert result.returncode == 0, result.stderr
    data = codec.compress(images[:12], quality="high")
    assert (tmp_path / "out.evz").read_bytes() == data
    # Without --bundle the container's fingerprint picks the shipped bundle; --index is random access.
    assert evz("decompress", tmp_path / "out.evz", tmp_path / "all.npy").returncode == 0
    assert np.array_equal(np.load(tmp_path / "all.npy"), codec.decompress(data))
    result = evz("decompress", tmp_path / "out.evz", tmp_path / "two.npy", "--index", "11", "--index", "3")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "two.npy"), codec.decompress(data, indices=[11, 3]))
    # --split: one container per image, as `edgevae compress --split`; quality by index.
    assert evz("compress", tmp_path / "in.npy", tmp_path / "split", "--bundle", "fashion-mnist-codec", "--split",
               "--quality", "0").returncode == 0
    assert [(tmp_path / "split" / f"{i}.evz").read_bytes() for i in range(12)] == codec.compress_each(images[:12], quality=0)
    info = json.loads(evz("info", tmp_path / "out.evz").stdout)
    assert info["count"] == 12 and info["quality"] == "high" and info["modelMatches"] is True


@pytest.mark.slow
def test_context_bundles_are_read_and_fingerprinted_as_python_does(context_bundle: Path, tmp_path: Path) -> None:
    """A bundle with pixel groups: Node checks its context.onnx and finds the fingerprint Python
    wrote into the container, then refuses the (float) lossless file in one line."""
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    (tmp_path / "ctx.evz").write_bytes(LosslessCodec(load(context_bundle, threads=1)).compress(images))
    result = evz("info", tmp_path / "ctx.evz", "--bundle", context_bundle)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["mode"] == "lossless" and info["modelMatches"] is True
    result = evz("decompress", tmp_path / "ctx.evz", tmp_path / "out.npy", "--bundle", context_bundle)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out.npy").exists()
    # a bundle that gives its tile (here the default one, written out) hashes it into the fingerprint
    tiled = tmp_path / "tiled"
    shutil.copytree(context_bundle, tiled)
    manifest = json.loads((tiled / "model.json").read_text())
    (tiled / "model.json").write_text(json.dumps({**manifest, "pixel_tile": [[0, 2], [3, 1]]}))
    model = load(tiled, threads=1)
    assert model.bundle.fingerprint != load(context_bundle, threads=1).bundle.fingerprint
    (tmp_path / "tiled.evz").write_bytes(LosslessCodec(model).compress(images))
    for bundle, matches in ((tiled, True), (context_bundle, False)):
        result = evz("info", tmp_path / "tiled.evz", "--bundle", bundle)
        assert result.returncode == 0 and json.loads(result.stdout)["modelMatches"] is matches, result.stderr


@pytest.mark.slow
def test_cli_errors_are_one_line_with_exit_2_and_write_nothing(images: np.ndarray, tmp_path: Path) -> None:
    codec = Codec(load(shipped_bundles()["fashion-mnist-codec"], threads=1))
    good = codec.compress(images[:3])
    (tmp_path / "good.evz").write_bytes(good)
    (tmp_path / "damaged.evz").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    lossless = LosslessCodec(load(shipped_bundles()["fashion-mnist"], threads=1)).compress(images[:2])
    (tmp_path / "lossless.evz").write_bytes(lossless)
    np.save(tmp_path / "in.npy", images[:3])
    np.save(tmp_path / "float.npy", images[:3].astype(np.float32))
    np.save(tmp_path / "shape.npy", images[:3, :, :20])
    (tmp_path / "exists.npy").write_bytes(b"keep")
    out = tmp_path / "out.npy"
    tampered, partial = tmp_path / "tampered", tmp_path / "partial"
    for folder in (tampered, partial):
        shutil.copytree(shipped_bundles()["fashion-mnist-codec"], folder)
    (tampered / "codec.json").write_text((tampered / "codec.json").read_text().replace('"balanced"', '"Balanced"', 1))
    (partial / "decoder.onnx").unlink()
    cases = {
        "missing input": (["decompress", tmp_path / "nope.evz", out], "no such file"),
        "damaged": (["decompress", tmp_path / "damaged.evz", out], "or it is damaged"),
        "damaged, its bundle named": (["decompress", tmp_path / "damaged.evz", out, "--bundle", "fashion-mnist-codec"],
                                      "checksum mismatch"),
        "lossless": (["decompress", tmp_path / "lossless.evz", out], "lossless containers (mode 1)"),
        "not a container": (["decompress", tmp_path / "in.npy", out], "wrong magic byte"),
        "bad index": (["decompress", tmp_path / "good.evz", out, "--index", "3"], "image index 3 is out of range"),
        "wrong model": (["decompress", tmp_path / "good.evz", out, "--bundle", "fashion-mnist-codec-hq"], "another model"),
        "no bundle folder": (["decompress", tmp_path / "good.evz", out, "--bundle", tmp_path / "none"], "no such model bundle"),
        "exists": (["decompress", tmp_path / "good.evz", tmp_path / "exists.npy"], "--force"),
        "unwritable": (["decompress", tmp_path / "good.evz", tmp_path / "no" / "dir" / "x.npy"], "cannot write"),
        "unknown quality": (["compress", tmp_path / "in.npy", out, "--bundle", "fashion-mnist-codec", "--quality", "max"],
                            "unknown quality 'max'"),
        "float images": (["compress", tmp_path / "float.npy", out, "--bundle", "fashion-mnist-codec"], "uint8"),
        "wrong shape": (["compress", tmp_path / "shape.npy", out, "--bundle", "fashion-mnist-codec"], "must have shape"),
        "no bundle": (["compress", tmp_path / "in.npy", out], "needs --bundle"),
        "tampered bundle": (["decompress", tmp_path / "good.evz", out, "--bundle", tampered], "sha256 does not match"),
        "partial bundle": (["decompress", tmp_path / "good.evz", out, "--bundle", partial], "bundle is partial"),
        "unknown command": (["explode"], "unknown command"),
    }
    for label, (args, needle) in cases.items():
        result = evz(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, f"{label}: exit {result.returncode}, {result.stderr}"
        assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], f"{label}: {result.stderr!r}"
        assert not out.exists(), label
    assert (tmp_path / "exists.npy").read_bytes() == b"keep"
    assert not list(tmp_path.glob("*.partial-*"))
    help_text = evz("--help")
    assert help_text.returncode == 0 and "compress IN.npy OUT.evz" in help_text.stdout and "decompress IN.evz" in help_text.stdout


def test_cli_lossless_and_near_lossless_of_an_integer_bundle(images: np.ndarray, integer_bundle: Path, tmp_path: Path) -> None:
    """evz compress --lossless / --max-error K with an integer bundle writes Python's bytes; decompress
    gives Python's pixels; options that do not go together, and a float bundle, are one-line errors."""
    np.save(tmp_path / "in.npy", images[:40])
    model = load(integer_bundle, threads=1)
    for flags, codec in ((["--lossless"], LosslessCodec(model)), (["--max-error", "4"], NearLosslessCodec(model, max_error=4))):
        out = tmp_path / f"{flags[0][2:]}.evz"
        result = evz("compress", tmp_path / "in.npy", out, "--bundle", integer_bundle, *flags)
        assert result.returncode == 0, result.stderr
        data = codec.compress(images[:40])
        assert out.read_bytes() == data
        result = evz("decompress", out, tmp_path / f"{flags[0][2:]}.npy", "--bundle", integer_bundle)
        assert result.returncode == 0, result.stderr
        assert np.array_equal(np.load(tmp_path / f"{flags[0][2:]}.npy"), codec.decompress(data))
    for args, message in (
        (["--lossless", "--quality", "high"], "--quality does not apply to --lossless"),
        (["--max-error", "4", "--lossless"], "--max-error does not combine with --lossless"),
        (["--max-error", "0"], "max error must be an integer from 1 to 32"),
        (["--max-error", "x"], "max error must be an integer from 1 to 32"),
    ):
        result = evz("compress", tmp_path / "in.npy", tmp_path / "bad.evz", "--bundle", integer_bundle, *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert not (tmp_path / "bad.evz").exists()
    result = evz("compress", tmp_path / "in.npy", tmp_path / "bad.evz", "--bundle", "fashion-mnist", "--lossless")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "computes in floating point" in result.stderr
    assert "--lossless" in evz("--help").stdout and "--max-error K" in evz("--help").stdout


# -- lossless containers of an integer context bundle (pixel groups, an integer context.onnx) ------

#: The shipped integer context bundle: integer encoder and decoder, pixel groups refined by an
#: integer context.onnx (FORMAT.md §7.10); its lossless files are version-3 files every engine reads.
CONTEXT_EXACT_BUNDLE = ROOT / "exported" / "fashion-mnist-context2-exact"
#: Images of its parity containers: two chains (both lanes, many steps each), a few of them
#: out-of-domain (noise, flat, patterns) next to real ones.
CONTEXT_EXACT_IMAGES = 64
NEAR_LOSSLESS_WITH_GROUPS = "codes pixels in groups, for lossless compression only"


@pytest.fixture(scope="module")
def integer_context_bundle() -> Path:
    return CONTEXT_EXACT_BUNDLE


def _context_batch(images: np.ndarray) -> np.ndarray:
    return np.concatenate([images[: CONTEXT_EXACT_IMAGES - 8], images[-8:]])


@pytest.mark.slow
def test_node_reads_and_writes_python_lossless_files_of_an_integer_context_bundle(
        images: np.ndarray, integer_context_bundle: Path, tmp_path: Path) -> None:
    """Pixel groups with an integer context graph in JavaScript: Node decodes Python's lossless
    containers (many images, one image) to the same pixels and writes Python's bytes for the same
    images; near-lossless, which pixel groups cannot do, is refused with Python's message whether
    Node is asked to write it or to read a (forged) one."""
    model = load(integer_context_bundle, threads=1)
    assert model.pixel_groups > 1 and model.integer
    batch = _context_batch(images)
    codec = LosslessCodec(model)
    cases = {"many": batch, "one": batch[:1]}
    python = {label: codec.compress(data) for label, data in cases.items()}
    for label, data in python.items():
        assert fmt.parse(data).header.version == fmt.EXACT_VERSION
        assert np.array_equal(codec.decompress(data), cases[label]), label
    # a near-lossless container no writer makes: a lossless payload framed as K = 4 (valid CRC)
    payload = fmt.parse(python["one"]).payload(0)
    forged = fmt.pack_near_lossless(model.bundle.fingerprint, model.image_shape, 1, 4, 0, payload, True)
    refusals = {}
    for label, attempt in (("write", lambda: NearLosslessCodec(model, max_error=4).compress(batch[:16])),
                           ("read", lambda: NearLosslessCodec(model, max_error=4).decompress(forged))):
        with pytest.raises(InputError, match=NEAR_LOSSLESS_WITH_GROUPS) as refused:
            attempt()
        refusals[label] = str(refused.value)
    jobs = []
    for label, data in python.items():
        np.save(tmp_path / f"{label}.npy", cases[label])
        (tmp_path / f"{label}.evz").write_bytes(data)
        jobs.append({"op": "decode", "bundle": str(integer_context_bundle), "container": str(tmp_path / f"{label}.evz"),
                     "out": str(tmp_path / f"{label}.js.npy")})
        jobs.append({"op": "encode", "bundle": str(integer_context_bundle), "images": str(tmp_path / f"{label}.npy"),
                     "quality": None, "lossless": True, "out": str(tmp_path / f"{label}.js.evz")})
    (tmp_path / "forged.evz").write_bytes(forged)
    jobs.append({"op": "encode", "bundle": str(integer_context_bundle), "images": str(tmp_path / "many.npy"),
                 "quality": None, "max_error": 4, "out": str(tmp_path / "near.js.evz")})
    jobs.append({"op": "decode", "bundle": str(integer_context_bundle), "container": str(tmp_path / "forged.evz"),
                 "out": str(tmp_path / "forged.js.npy")})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run_node(WEB / "test" / "parity.mjs", tmp_path / "jobs.json", tmp_path / "results.json")
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(r["error"] is None for r in results[:4]), results[:4]
    for label, data in python.items():
        got = np.load(tmp_path / f"{label}.js.npy")
        assert got.shape == cases[label].shape and int((got != cases[label]).sum()) == 0, f"{label}: pixels differ"
        assert (tmp_path / f"{label}.js.evz").read_bytes() == data, f"{label}: Node's container differs from Python's"
    # Python's own message, with the bundle's name (Python writes on a 16-image batch: the same words)
    assert results[4]["error"] == refusals["write"], results[4]
    assert results[5]["error"] == refusals["read"], results[5]
    assert not (tmp_path / "near.js.evz").exists() and not (tmp_path / "forged.js.npy").exists()


@pytest.mark.slow
def test_cli_lossless_of_an_integer_context_bundle(images: np.ndarray, integer_context_bundle: Path, tmp_path: Path) -> None:
    """evz compress --lossless with an integer context bundle writes Python's bytes, decompress
    (the bundle named, or found by the container's fingerprint when it is shipped) gives the
    images back; --max-error is a one-line error."""
    batch = _context_batch(images)[:24]
    np.save(tmp_path / "in.npy", batch)
    data = LosslessCodec(load(integer_context_bundle, threads=1)).compress(batch)
    result = evz("compress", tmp_path / "in.npy", tmp_path / "out.evz", "--bundle", integer_context_bundle, "--lossless")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.evz").read_bytes() == data
    result = evz("decompress", tmp_path / "out.evz", tmp_path / "back.npy")  # the shipped bundle, by fingerprint
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "back.npy"), batch)
    result = evz("compress", tmp_path / "in.npy", tmp_path / "near.evz", "--bundle", integer_context_bundle, "--max-error", "2")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and NEAR_LOSSLESS_WITH_GROUPS in result.stderr, result.stderr
    assert not (tmp_path / "near.evz").exists()


def test_format_md_worked_examples_in_javascript() -> None:
    """FORMAT.md §3.5's examples (toy coder states, the real container byte by byte) hold for web/."""
    result = run_node("--test", WEB / "test" / "format.test.mjs", check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"# pass [1-9]", result.stdout) and "# fail 0" in result.stdout


def test_javascript_refuses_the_bad_manifests_as_python_does() -> None:
    """tests/fixtures/bad-manifests.json (generated from runtime/manifest.py's schema, checked against
    it by tests/test_manifest.py): web/bundle.js refuses each with Python's exact message."""
    result = run_node("--test", WEB / "test" / "manifest.test.mjs", check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"# pass [1-9]", result.stdout) and "# fail 0" in result.stdout


def test_javascript_pixel_groups_and_integer_context_manifests() -> None:
    """web/test/context.test.mjs: pixel groups' positions as runtime/bitsback.py makes them, and an
    integer context bundle's manifest checked against the integer contract (Python's messages)."""
    result = run_node("--test", WEB / "test" / "context.test.mjs", check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"# pass [1-9]", result.stdout) and "# fail 0" in result.stdout


def test_format_md_worked_container_is_what_python_writes() -> None:
    """The 15-byte container FORMAT.md §3.5 walks through is Python's own output for that image."""
    from PIL import Image

    text = (ROOT / "docs" / "FORMAT.md").read_text()
    image = np.asarray(Image.open(ROOT / "examples" / "sneaker.png"))[None]
    data = Codec(load(shipped_bundles()["fashion-mnist-codec"], threads=1)).compress(image, quality=0)
    assert " ".join(f"{b:02x}" for b in data) in text
    assert zlib.crc32(b"123456789") == 0xCBF43926 and "0xCBF43926" in text


# -- the page in headless Chromium (onnxruntime-web, WebAssembly) ---------------------------------

#: onnxruntime-web's WASM kernels round a few decoder outputs differently from onnxruntime's CPU
#: build: pixels may differ by one level, rarely. Bounds for the page's pixels against Python's.
WASM_MAX_PIXEL_DIFFERENCE = 1
WASM_MAX_DIFFERING_FRACTION = 1e-4
WASM_MAX_INT8_PIXEL_DIFFERENCE = 8


def chromium_bin() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is not installed: `make web-deps` (apt-get install chromium) sets it up"
    return chromium


def _translucent_images(folder: Path) -> tuple[Path, Path]:
    """Two gray + alpha PNGs: the model's size (28x28) with a half-transparent top half, and 56x56
    white with a half-transparent right half (the page resizes it: composited over black)."""
    from PIL import Image

    sneaker = np.asarray(Image.open(ROOT / "examples" / "sneaker.png"))
    alpha = np.full((28, 28), 255, np.uint8)
    alpha[:14] = 128
    same = folder / "translucent.png"
    Image.fromarray(np.stack([sneaker, alpha], -1), "LA").save(same)
    alpha = np.full((56, 56), 255, np.uint8)
    alpha[:, 28:] = 128
    other = folder / "translucent-56.png"
    Image.fromarray(np.stack([np.full((56, 56), 255, np.uint8), alpha], -1), "LA").save(other)
    return same, other


def _page_exact_jobs(integer_bundle: Path, images: np.ndarray, work: Path) -> tuple[dict, list[dict]]:
    """Spec entries and Python's results for the page's integer-bundle checks: lossless and
    near-lossless files decoded and written in the page, one opened through its file input (the
    bundle is served as ../exported/fashion-mnist-exact/ if it is not there already)."""
    model = load(integer_bundle, threads=1)
    url = "/exported/fashion-mnist-exact/"
    mounts = {} if integer_bundle.resolve() == EXACT_BUNDLE.resolve() else {url: str(integer_bundle)}
    batch = images[:64]
    batch.tofile(work / "exact-images.raw")
    images[:1].tofile(work / "exact-one.raw")
    jobs, expected = [], []
    for label, codec, data_images, raw, k in (
        ("lossless", LosslessCodec(model), batch, "exact-images.raw", None),
        ("near-lossless K=4", NearLosslessCodec(model, max_error=4), batch, "exact-images.raw", 4),
        ("near-lossless K=4 one image", NearLosslessCodec(model, max_error=4), images[:1], "exact-one.raw", 4),
    ):
        data = codec.compress(data_images)
        path = work / f"exact-{len(jobs)}.evz"
        path.write_bytes(data)
        jobs.append({"bundle": url, "container": str(path), "images": str(work / raw), "max_error": k})
        expected.append({"label": label, "container": data, "pixels": codec.decompress(data)})
    if model.bundle.codec_path is not None:  # the integer bundle's lossy codec too: integer latents in
        codec = Codec(model)
        for q in range(len(codec.lossy_qualities)):
            data = codec.compress(batch, quality=q)
            path = work / f"exact-{len(jobs)}.evz"
            path.write_bytes(data)
            jobs.append({"bundle": url, "container": str(path), "images": str(work / "exact-images.raw"), "quality": q})
            expected.append({"label": f"lossy quality {q}", "container": data, "pixels": codec.decompress(data)})
    spec = {"mounts": mounts, "exact": jobs, "opened_exact": [jobs[0]["container"], jobs[2]["container"]]}
    return spec, expected


#: Images of the page's integer context bundle file (WASM runs its context graph per group and step).
PAGE_CONTEXT_IMAGES = 16


def _page_context_jobs(images: np.ndarray, work: Path, spec: dict) -> dict:
    """Adds to the page's spec the shipped integer context bundle's lossless file (decoded and
    written in the page, then opened through its file input, which finds the bundle by the file's
    fingerprint); returns Python's result and where the page's results will be."""
    bundle, url = CONTEXT_EXACT_BUNDLE, f"/exported/{CONTEXT_EXACT_BUNDLE.name}/"
    batch = _context_batch(images)[-PAGE_CONTEXT_IMAGES:]
    batch.tofile(work / "context-images.raw")
    data = LosslessCodec(load(bundle, threads=1)).compress(batch)
    (work / "context.evz").write_bytes(data)
    spec["exact"].append({"bundle": url, "container": str(work / "context.evz"), "images": str(work / "context-images.raw"),
                          "max_error": None})
    spec["opened_exact"].append(str(work / "context.evz"))
    return {"container": data, "pixels": batch, "exact": len(spec["exact"]) - 1, "opened": len(spec["opened_exact"]) - 1}


@pytest.fixture(scope="module")
def page_run(images: np.ndarray, integer_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Load the page in headless Chromium, use every panel, and decode/compress in it the images
    every codec bundle's default quality codes here (the WASM parity figures), and an integer
    bundle's lossless and near-lossless files."""
    work = tmp_path_factory.mktemp("page")
    exact_spec, exact_expected = _page_exact_jobs(integer_bundle, images, work)
    context_expected = _page_context_jobs(images, work, exact_spec)
    codecs = {name: Codec(load(shipped_bundles()[name], threads=1)) for name in CODEC_BUNDLES}
    opened = codecs["fashion-mnist-codec"].compress(images[:40], quality="high")
    (work / "opened.evz").write_bytes(opened)
    bulk, expected = [], []
    images.tofile(work / "images.raw")
    for name, codec in codecs.items():
        data = codec.compress(images)
        (work / f"{name}.evz").write_bytes(data)
        bulk.append({"bundle": name, "container": str(work / f"{name}.evz"), "images": str(work / "images.raw"),
                     "quality": codec.default_quality})
        expected.append({"bundle": name, "container": data, "pixels": codec.decompress(data)})
    screenshot = ROOT / "docs" / "img" / "web.png" if os.environ.get("EDGEVAE_UPDATE_SCREENSHOT") else work / "web.png"
    spec = {"chromium": chromium_bin(), "image": str(ROOT / "examples" / "sneaker.png"),
            "container": str(work / "opened.evz"), "bulk": bulk, "screenshot": str(screenshot),
            "translucent": [str(p) for p in _translucent_images(work)], **exact_spec}
    (work / "spec.json").write_text(json.dumps(spec))
    run_node(WEB / "test" / "page.mjs", work / "spec.json", work / "result.json", timeout=600)
    result = json.loads((work / "result.json").read_text())
    return {"result": result, "expected": expected, "opened": opened, "codecs": codecs, "screenshot": screenshot,
            "exact_expected": exact_expected, "stand_in": _is_stand_in(integer_bundle), "context_expected": context_expected}


def _is_stand_in(bundle: Path) -> bool:
    """True for the wrapped float bundle (float arithmetic inside: WASM may round an output the other
    way, and then a file must fail its checks, never decode to other pixels)."""
    return not os.environ.get("EDGEVAE_TEST_INTEGER_BUNDLE") and bundle.resolve() != EXACT_BUNDLE.resolve()


def _pixel_differences(got: np.ndarray, want: np.ndarray) -> tuple[int, int]:
    diff = np.abs(got.astype(int) - want.astype(int))
    return int((diff > 0).sum()), int(diff.max(initial=0))


@pytest.mark.slow
def test_page_loads_offline_and_samples(page_run: dict) -> None:
    result = page_run["result"]
    assert result["status"].startswith("ready") or "decoded" in result["status"], result["status"]
    assert result["console"] == [], result["console"]
    assert result["requests"] == [], "the page fetched something from outside its own server"
    first, second = (np.array(s["pixels"], np.uint8).reshape(32, 28, 28) for s in result["samples"])
    assert first.std() > 20 and second.std() > 20, "samples look blank"
    assert result["samples"][1]["seed"] == 5 and not np.array_equal(first, second), "a new seed must give new samples"
    a, mid = (np.array(b["pixels"], np.uint8) for b in result["blend"])
    sneaker = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(ROOT / "examples" / "sneaker.png"))[None, None]
    reconstruction = load(shipped_bundles()["fashion-mnist"], threads=1).reconstruct(sneaker).ravel()
    differing, largest = _pixel_differences(a, reconstruction)
    assert largest <= WASM_MAX_PIXEL_DIFFERENCE, "the blend at A must be A's reconstruction"
    assert not np.array_equal(mid, a)
    assert page_run["screenshot"].stat().st_size > 20_000


@pytest.mark.slow
def test_page_round_trip_gives_python_bytes_and_pixels(page_run: dict) -> None:
    from PIL import Image

    result = page_run["result"]
    codec = page_run["codecs"]["fashion-mnist-codec"]
    image = np.asarray(Image.open(ROOT / "examples" / "sneaker.png"))[None, None]
    data = codec.compress(image)
    assert bytes(result["compress"]["bytes"]) == data, "the page's .evz differs from Python's"
    assert result["compressHex"] == " ".join(f"{b:02x}" for b in data)
    assert np.array_equal(np.array(result["compress"]["original"], np.uint8), image.ravel())
    differing, largest = _pixel_differences(np.array(result["compress"]["decoded"], np.uint8), codec.decompress(data).ravel())
    assert largest <= WASM_MAX_PIXEL_DIFFERENCE and differing <= 2
    opened = np.array(result["open"]["pixels"], np.uint8)
    want = codec.decompress(page_run["opened"]).ravel()
    differing, largest = _pixel_differences(opened, want)
    assert result["open"]["bundle"] == "fashion-mnist-codec" and len(opened) == len(want)
    assert largest <= WASM_MAX_PIXEL_DIFFERENCE and differing <= WASM_MAX_DIFFERING_FRACTION * len(want) + 2


@pytest.mark.slow
def test_page_decodes_and_writes_integer_bundle_lossless_files_exactly(page_run: dict, capsys: pytest.CaptureFixture) -> None:
    """Chromium (onnxruntime-web, WASM) against Python on an integer bundle's lossless and
    near-lossless files: 0 pixels differ and the page writes Python's bytes; the page's file input
    opens such a file. (The float stand-in bundle may instead fail a file's checks, never differ.)"""
    result = page_run["result"]
    lines = []
    for got, want in zip(result["exact"], page_run["exact_expected"]):
        if got["error"] is not None:
            assert page_run["stand_in"], f"{want['label']}: {got['error']}"
            assert "checksum" in got["error"] or "check:" in got["error"] or "did not end" in got["error"], got["error"]
            lines.append(f"{want['label']}: refused by its checks (float stand-in bundle): {got['error']}")
            continue
        pixels = np.array(got["pixels"], np.uint8)
        differing, _ = _pixel_differences(pixels, want["pixels"].ravel())
        same = bytes(got["container"]) == want["container"]
        lines.append(f"{want['label']}: {differing} of {pixels.size} pixels differ, container byte-identical: {same}")
        assert differing == 0, lines[-1]
        assert same or page_run["stand_in"], lines[-1]
    for opened, want, mode in zip(result["openedExact"], page_run["exact_expected"][::2], ("lossless", "near-lossless")):
        if opened["error"] is not None:
            assert page_run["stand_in"] and any(t in opened["error"] for t in ("checksum", "did not end")), opened["error"]
            continue
        assert opened["mode"] == mode and mode in opened["summary"], opened["summary"]
        assert np.array_equal(np.array(opened["pixels"], np.uint8), want["pixels"].ravel())
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.slow
def test_page_reads_and_writes_integer_context_bundle_lossless_files(page_run: dict) -> None:
    """Chromium (onnxruntime-web, WASM) on an integer context bundle's lossless file: decoded to
    the images and written byte for byte as Python does, and opened through the file input."""
    want = page_run["context_expected"]
    got = page_run["result"]["exact"][want["exact"]]
    assert got["error"] is None, got["error"]
    assert np.array_equal(np.array(got["pixels"], np.uint8), want["pixels"].ravel())
    assert bytes(got["container"]) == want["container"], "the page's context-bundle container differs from Python's"
    opened = page_run["result"]["openedExact"][want["opened"]]
    assert opened["error"] is None, opened["error"]
    assert opened["mode"] == "lossless" and opened["bundle"] == CONTEXT_EXACT_BUNDLE.name, opened
    assert np.array_equal(np.array(opened["pixels"], np.uint8), want["pixels"].ravel())


@pytest.mark.slow
def test_page_clears_the_previous_result_when_a_file_fails(page_run: dict) -> None:
    """A bad file picked after a good one: the error is shown, the good file's images are not."""
    result = page_run["result"]
    opened, compressed = result["openError"], result["compressError"]
    assert opened["error"] and opened["status"], opened
    assert opened["hidden"] and opened["summary"] == "" and opened["last"] is None, opened
    assert compressed["error"] and compressed["status"].startswith("junk.png: not a readable image"), compressed
    assert compressed["hidden"] and compressed["summary"] == "" and compressed["last"] is None, compressed
    assert result["console"] == [], result["console"]  # typed errors: reported on the page, not the console


@pytest.mark.slow
def test_page_follows_pythons_alpha_rule(page_run: dict, tmp_path: Path) -> None:
    """runtime/images.py's rule in the page: transparent pixels in an image the page takes as it is
    are refused with Python's message; in one the page resizes they are composited over black."""
    from edgevae.runtime.images import load_image

    same, other = _translucent_images(tmp_path)
    refused, resized = page_run["result"]["translucent"]
    with pytest.raises(InputError) as python:
        load_image(same, (1, 28, 28))
    message = str(python.value).split(": ", 1)[1]  # after the file name (a path in Python)
    assert refused["error"] and refused["last"] is None, refused
    assert refused["status"].startswith(f"{same.name}: " + message.split(": flatten it first")[0] + ": flatten it first")
    assert not resized["error"], resized
    got = np.array(resized["last"]["original"], np.uint8).reshape(28, 28)
    want = load_image(other, (1, 28, 28), resize=True)[0]
    assert abs(int(want[:, :12].mean()) - 255) <= 1 and abs(int(want[:, 16:].mean()) - 128) <= 1  # Python's own rule
    assert np.abs(got[:, :12].astype(int) - want[:, :12]).max() <= 2, got  # opaque white stays white
    assert np.abs(got[:, 16:].astype(int) - want[:, 16:]).max() <= 2, got  # half-transparent white over black: 128


@pytest.mark.slow
def test_wasm_parity_figures(page_run: dict, capsys: pytest.CaptureFixture) -> None:
    """onnxruntime-web against Python: pixels of Python's containers, and the page's own containers."""
    lines, figures = [], []
    for got, want in zip(page_run["result"]["bulk"], page_run["expected"]):
        pixels = np.array(got["pixels"], np.uint8)
        differing, largest = _pixel_differences(pixels, want["pixels"].ravel())
        same_bytes = bytes(got["container"]) == want["container"]
        lines.append(f"{want['bundle']}: {differing} of {pixels.size} pixels differ (max {largest}); "
                     f"containers {'identical' if same_bytes else 'DIFFER'}")
        figures.append((want["bundle"], differing, largest, pixels.size, same_bytes))
    with capsys.disabled():
        print("\nonnxruntime-web (WASM) vs onnxruntime CPU, default quality, "
              f"{len(page_run['expected'][0]['pixels'])} images:\n  " + "\n  ".join(lines))
    for bundle, differing, largest, size, same_bytes in figures:
        # int8 graphs: WASM's integer kernels requantize differently, a few pixels move by more.
        limit = WASM_MAX_INT8_PIXEL_DIFFERENCE if "int8" in bundle else WASM_MAX_PIXEL_DIFFERENCE
        assert largest <= limit and differing <= WASM_MAX_DIFFERING_FRACTION * size, bundle


# -- README's snippets --------------------------------------------------------------------------


def readme_block(language: str, first_line: str) -> str:
    """The README code block of ``language`` whose first line starts with ``first_line``."""
    for block in re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README.md has no ```{language} block starting with {first_line!r}")


def run_snippet(code: str) -> subprocess.CompletedProcess:
    """Run JavaScript as a module file inside web/ (so its imports resolve to web/node_modules), from the repository root."""
    path = WEB / "test" / f".readme-snippet-{os.getpid()}.mjs"
    path.write_text(code.replace('from "./web/index.js"', 'from "../index.js"'))
    try:
        return run_node(path, timeout=120)
    finally:
        path.unlink()


@pytest.mark.parametrize("name", CODEC_BUNDLES)
def test_readme_javascript_onnx_snippet_runs(name: str) -> None:
    """README's onnxruntime-node snippet samples an image from any bundle: D comes from model.json."""
    code = readme_block("js", "// JavaScript: sample one image")
    assert 'const bundle = "exported/fashion-mnist";' in code
    out = run_snippet(code.replace('"exported/fashion-mnist"', f'"exported/{name}"')).stdout
    c, h, w = read_manifest(shipped_bundles()[name]).image_shape
    assert out.strip() == f"uint8 [ 1, {c}, {h}, {w} ] {c * h * w}"


def test_readme_javascript_package_snippet_runs() -> None:
    code = readme_block("js", "// Node, from the repository root")
    count, *rest = run_snippet(code).stdout.split()
    back, third = int(rest[0]), int(rest[1])
    assert 4 * 784 == back and third == 784 and 7 + 4 < int(count) < 4 * 40
    assert rest[2:] == list(Codec(load(shipped_bundles()["fashion-mnist-codec"], threads=1)).lossy_qualities)


def _onnxruntime_header() -> Path | None:
    candidates = [os.environ.get("ONNXRUNTIME_INCLUDE", ""), "/usr/include", "/usr/local/include",
                  "/usr/include/onnxruntime", "/usr/local/include/onnxruntime"]
    for folder in filter(None, candidates):
        if (Path(folder) / "onnxruntime_c_api.h").is_file():
            return Path(folder)
    return None


def test_readme_c_snippet_compiles_and_runs(tmp_path: Path) -> None:
    """README's C program, compiled against onnxruntime's C library (the one inside onnxruntime-node)
    and run on every bundle. Needs onnxruntime_c_api.h, which no registry CI reaches ships
    (set ONNXRUNTIME_INCLUDE to its folder); checked by hand with the v1.29 API header."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    import platform

    arch = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    libraries = sorted((WEB / "node_modules" / "onnxruntime-node").glob(f"bin/napi-*/linux/{arch}/libonnxruntime.so.1"))
    header = _onnxruntime_header()
    if not (compiler and libraries and header):
        pytest.skip("onnxruntime_c_api.h is not installed (set ONNXRUNTIME_INCLUDE): the C snippet is not compiled")
    (tmp_path / "sample.c").write_text(readme_block("c", "/* C: sample one image"))
    library = libraries[0].resolve()
    subprocess.run([compiler, "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{header}", str(tmp_path / "sample.c"),
                    str(library), "-lm", f"-Wl,-rpath,{library.parent}", "-o", str(tmp_path / "sample")],
                   check=True, capture_output=True, timeout=120)
    for name in CODEC_BUNDLES:
        bundle = read_manifest(shipped_bundles()[name])
        out = subprocess.run([str(tmp_path / "sample"), str(bundle.graph_path(contract.DECODER))],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        c, h, w = bundle.image_shape
        assert out.startswith(f"D={bundle.latent_dim} pixels uint8 [1, {c}, {h}, {w}]"), out


def test_node_samples_through_the_learned_prior_like_python(tmp_path: Path) -> None:
    """The JavaScript model samples through prior.onnx when the bundle has one: the latents it gives
    for its own noise are what Python's prior graph gives for that noise, and without a prior it
    keeps N(0, I)."""
    script = tmp_path / "prior.mjs"
    script.write_text(
        f'import {{ load, }} from "{(WEB / "index.js").as_uri()}";\n'
        f'import {{ gaussian }} from "{(WEB / "model.js").as_uri()}";\n'
        f'const m = await load("{ROOT / "exported" / "fashion-mnist"}");\n'
        'const z = await m.sampleLatents(5, { seed: 3, temperature: 0.85 });\n'
        'const d = Number(m.bundle.manifest.prior.noise_dim);\n'
        'const u = gaussian(5 * d, 3).map((e) => Math.fround(e * Math.fround(0.85)));\n'
        f'const c = await load("{ROOT / "exported" / "fashion-mnist-codec"}");\n'
        'const normal = await c.sampleLatents(2, { seed: 3 });\n'
        'console.log(JSON.stringify({ prior: m.prior, codecPrior: c.prior, z: Array.from(z), u: Array.from(u),\n'
        '  normal: Array.from(normal), expectedNormal: Array.from(gaussian(2 * c.latentDim, 3)) }));\n')
    out = json.loads(run_node(script).stdout)
    assert out["prior"] == "learned" and out["codecPrior"] == "normal"
    model = load("fashion-mnist")
    u = np.array(out["u"], np.float32).reshape(5, -1)
    model.sample_latents(1, seed=0)  # creates the prior's session
    want = model.sessions["prior"].run(None, {"noise": u})[0]
    np.testing.assert_allclose(np.array(out["z"], np.float32).reshape(want.shape), want, atol=1e-5)
    assert out["normal"] == pytest.approx(out["expectedNormal"])
