"""Encoder-side latent refinement (runtime/refine.py) through the lossy Codec and ``edgevae compress
--refine``: the search never raises an image's cost, its files are ordinary containers that the plain
decoder turns into exactly the image the search scored, its bytes do not depend on batch size or
threads, and bad requests fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgevae.runtime as ev
from conftest import synthetic_images, write_pngs
from edgevae.runtime import codec as C
from edgevae.runtime import container as fmt
from edgevae.runtime import refine as RF
from edgevae.runtime import tables as T
from edgevae.runtime.errors import InputError
from edgevae.runtime.images import psnr
from test_cli import assert_clean_error, edgevae
from test_codec import active_bundle  # noqa: F401  (the fixture: the tiny bundle with tables that code real symbols)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def codec(active_bundle: Path) -> C.Codec:  # noqa: F811
    return ev.Codec(ev.load(active_bundle, threads=1))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic_images(20, seed=7)


@pytest.fixture(scope="module")
def shipped() -> C.Codec:
    """The shipped codec bundle: a decoder whose pixels answer every symbol move, so the search's
    decisions turn on them (the tiny bundle's decoder, trained for seconds, barely moves)."""
    return ev.Codec(ev.load("fashion-mnist-codec", threads=1))


@pytest.fixture(scope="module")
def examples(shipped: C.Codec) -> np.ndarray:
    """The ten Fashion-MNIST test images of examples/."""
    from edgevae.runtime.images import read_images

    return read_images(sorted((ROOT / "examples").glob("*.png")), shipped.model.image_shape)[0]


def _refined(codec: C.Codec, images: np.ndarray, quality: str, search: RF.Search = RF.Search(),
             chunk: int = RF.DEFAULT_CHUNK) -> tuple[T.QualityTable, np.ndarray, RF.Refined]:
    table = codec.tables.lookup(quality)
    start = table.symbols(codec.model.encode(images)[0])[1]
    return table, start, RF.refine(codec.model, table, images, start, search, chunk)


# -- the search ------------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", ["smallest", "balanced", "best"])
def test_refined_symbols_never_cost_more(codec: C.Codec, images: np.ndarray, quality: str) -> None:
    table, start, got = _refined(codec, images, quality)
    # The figures the search reports are the true ones: recomputed here from the symbols alone.
    pixels = codec.model.decode(table.latents(got.u))
    sse = ((pixels.astype(np.int64) - images) ** 2).reshape(len(images), -1).sum(1)
    assert np.array_equal(pixels, got.pixels) and np.array_equal(sse, got.sse)
    assert np.allclose(got.bits, table.bits(got.u))
    start_pixels = codec.model.decode(table.latents(start))
    assert np.array_equal(got.start_sse, ((start_pixels.astype(np.int64) - images) ** 2).reshape(len(images), -1).sum(1))
    assert np.allclose(got.start_bits, table.bits(start))
    cost = RF.cost(table.bits(got.u), sse, got.beta)
    start_cost = RF.cost(table.bits(start), got.start_sse, got.beta)
    assert (cost <= start_cost + 1e-9).all()
    assert np.array_equal(got.moves == 0, (got.u == start).all(1))  # an image that moved has other symbols
    assert (got.moves > 0).any(), "the search moved nothing: this test would not see a bad move"
    assert (cost[got.moves > 0] < start_cost[got.moves > 0]).all()  # every kept move paid for itself
    assert (np.abs(table.centers + T.unzigzag(got.u)) <= table.limits).all()


def test_rate_is_the_tables_code_length(codec: C.Codec, image_folder: Path) -> None:
    """QualityTable.bits is fit_tables' own measure: on the images the tables were fitted on, its mean
    is each level's train_bits_per_image; and a payload is that many bits in whole bytes, give or take
    the coder's termination."""
    from edgevae.runtime.images import read_images

    fitted = read_images([image_folder], codec.model.image_shape)[0]
    means = codec.model.encode(fitted)[0]
    for table in codec.tables.qualities:
        u = table.symbols(means)[1]
        assert table.bits(u).mean() == pytest.approx(table.train_bits_per_image, abs=1e-3)
        payloads = [fmt.parse(c).payload(0) for c in codec.compress_each(fitted[:6], table.name)]
        assert all(abs(8 * len(p) - b) <= 16 for p, b in zip(payloads, table.bits(u[:6]))), table.name


def _reference(model: ev.EdgeVAE, table: T.QualityTable, image: np.ndarray, u: np.ndarray,
               search: RF.Search, beta: float) -> np.ndarray:
    """The search as the module docstring states it, one image and one candidate at a time: every
    pass tries every dimension, +1 then -1 (then +-2 ...), and keeps the first lowest cost below the
    current one."""
    def score(k: np.ndarray) -> float:
        pixels = model.decode(T.dequantize(k[None], table.steps))
        return float(RF.cost(table.bits(T.zigzag(k[None] - table.centers)), RF.squared_error(pixels, image[None]),
                             beta)[0])

    k = table.centers + T.unzigzag(u)
    current = score(k)
    for _ in range(search.passes):
        for d in range(len(k)):
            best = None
            for delta in [s for r in range(1, search.radius + 1) for s in (r, -r)]:
                candidate = k.copy()
                candidate[d] += delta
                if abs(candidate[d]) <= table.limits[d] and (c := score(candidate)) < current:
                    best, current = candidate, c
            if best is not None:
                k = best
    return T.zigzag(k - table.centers)


@pytest.mark.parametrize("quality, search", [("balanced", RF.Search()), ("smallest", RF.Search(passes=3, radius=2))])
def test_search_is_the_documented_greedy_descent(shipped: C.Codec, examples: np.ndarray, quality: str,
                                                 search: RF.Search) -> None:
    table, start, got = _refined(shipped, examples[:4], quality, search)
    for i in range(4):
        assert np.array_equal(got.u[i], _reference(shipped.model, table, examples[i], start[i], search, got.beta)), i
    assert (got.moves > 0).all()


def test_search_is_the_same_in_any_chunk(shipped: C.Codec, examples: np.ndarray) -> None:
    _, _, whole = _refined(shipped, examples, "small")
    assert (whole.moves > 0).all()
    for chunk in (1, 3):
        _, _, other = _refined(shipped, examples, "small", chunk=chunk)
        assert np.array_equal(other.u, whole.u) and np.array_equal(other.pixels, whole.pixels)


def test_more_search_is_never_worse(codec: C.Codec, images: np.ndarray) -> None:
    """More passes start from the fewer passes' answer for the images still moving: never a higher cost."""
    _, _, one = _refined(codec, images, "balanced", RF.Search(passes=1))
    _, _, three = _refined(codec, images, "balanced", RF.Search(passes=3))
    assert (three.cost() <= one.cost() + 1e-9).all()
    _, _, wide = _refined(codec, images, "balanced", RF.Search(passes=1, radius=2))
    assert (wide.cost() <= wide.start_cost() + 1e-9).all()


def test_a_larger_beta_buys_quality_a_smaller_one_bytes(codec: C.Codec, images: np.ndarray) -> None:
    _, _, cheap = _refined(codec, images, "balanced", RF.Search(beta=0.01))
    _, _, sharp = _refined(codec, images, "balanced", RF.Search(beta=1000.0))
    assert cheap.bits.sum() < cheap.start_bits.sum()  # nearly free PSNR: spend no bits
    assert sharp.sse.sum() <= sharp.start_sse.sum() and cheap.bits.sum() <= sharp.bits.sum()


def test_on_the_shipped_codec_bundle(shipped: C.Codec, examples: np.ndarray) -> None:
    """On real images and the shipped codec bundle the search buys PSNR at no more bytes (measured on
    2,000 test images: +0.62 to +0.69 dB at 0.8-1.7 % fewer bytes per level, benchmarks/results/refine.md)."""
    for quality in ("smallest", "balanced"):
        plain = shipped.compress_each(examples, quality)
        refined = shipped.compress_each(examples, quality, refine=True)
        before = psnr(examples, np.concatenate([shipped.decompress(p) for p in plain])).mean()
        after = psnr(examples, np.concatenate([shipped.decompress(r) for r in refined])).mean()
        assert after - before > 0.3, (quality, before, after)
        assert sum(map(len, refined)) <= sum(map(len, plain)) + 2, quality


# -- the codec: ordinary containers, decoded as usual ---------------------------------------------


@pytest.mark.parametrize("quality", ["smallest", "high"])
def test_container_decodes_to_the_image_the_search_saw(active_bundle: Path, codec: C.Codec,  # noqa: F811
                                                        images: np.ndarray, quality: str) -> None:
    _, _, got = _refined(codec, images, quality)
    data = codec.compress(images, quality, refine=True)
    plain = ev.Codec(ev.load(active_bundle, threads=2), batch_size=7)  # another model object, batch, threads
    assert np.array_equal(plain.decompress(data), got.pixels)
    assert plain.describe(data).quality == quality and plain.describe(data).count == len(images)
    assert data != codec.compress(images, quality)  # the search did change symbols
    singles = codec.compress_each(images, quality, refine=True)
    parsed = fmt.parse(data)
    assert [fmt.parse(s).payload(0) for s in singles] == [parsed.payload(i) for i in range(len(images))]
    assert np.array_equal(plain.decompress(data, indices=[4]), got.pixels[4:5])


def test_default_compress_is_unchanged(codec: C.Codec, images: np.ndarray) -> None:
    """refine=False is the plain codec, byte for byte (web/ writes the same bytes; test_web.py)."""
    from edgevae.runtime.rangecode import encode_payloads

    table = codec.tables.default
    expected = codec._pack(table, encode_payloads(table, codec.model.encode(images)[0]))
    assert codec.compress(images) == expected == codec.compress(images, refine=False)


def test_refined_bytes_do_not_depend_on_batch_size_or_threads(active_bundle: Path, codec: C.Codec,  # noqa: F811
                                                              images: np.ndarray, shipped: C.Codec,
                                                              examples: np.ndarray) -> None:
    for bundle, model, x in ((active_bundle, codec.model, images), ("fashion-mnist-codec", shipped.model, examples)):
        reference = ev.Codec(model).compress(x, "small", refine=True)
        assert ev.Codec(model).compress(x, "small", refine=True) == reference
        for threads, batch_size in ((1, 1), (1, 6), (2, 4), (2, 128)):
            other = ev.Codec(ev.load(bundle, threads=threads), batch_size=batch_size)
            assert other.compress(x, "small", refine=True) == reference, (bundle, threads, batch_size)


@pytest.mark.slow
def test_refined_bytes_do_not_depend_on_batch_size_on_fashion_mnist() -> None:
    """The same on real data and the shipped codec bundle, where the decoder's pixels decide moves."""
    from edgevae.training.data import load_fashion_mnist

    x = load_fashion_mnist().test[:200]
    one, two = ev.load("fashion-mnist-codec", threads=1), ev.load("fashion-mnist-codec", threads=2)
    reference = ev.Codec(one, batch_size=200).compress(x, "smallest", refine=True)
    assert ev.Codec(two, batch_size=9).compress(x, "smallest", refine=True) == reference
    assert ev.Codec(one, batch_size=64).compress_each(x[:20], "smallest", refine=True) == \
        [fmt.pack(fmt.MODE_LOSSY, 0, ev.Codec(one).fingerprint, one.image_shape, [fmt.parse(reference).payload(i)])
         for i in range(20)]


# -- bad requests ----------------------------------------------------------------------------------


def test_bad_requests(codec: C.Codec, images: np.ndarray) -> None:
    for bad in ("yes", 1, None):
        with pytest.raises(InputError, match="refine must be"):
            codec.compress(images, refine=bad)  # type: ignore[arg-type]
    for kwargs, phrase in (({"passes": 0}, "passes"), ({"radius": 1.5}, "radius"), ({"beta": -1.0}, "beta"),
                           ({"beta": float("nan")}, "beta"), ({"passes": True}, "passes")):
        with pytest.raises(InputError, match=phrase):
            RF.Search(**kwargs)
    table = codec.tables.default
    start = table.symbols(codec.model.encode(images)[0])[1]
    with pytest.raises(InputError, match="shape"):
        RF.refine(codec.model, table, images, start[:3])
    with pytest.raises(InputError, match="chunk"):
        RF.refine(codec.model, table, images, start, chunk=0)
    far = start.copy()
    far[0, 0] = T.zigzag(np.array(table.limits[0] + 1 - table.centers[0]))
    with pytest.raises(InputError, match="out of the level's range"):
        RF.refine(codec.model, table, images, far)
    with pytest.raises(InputError, match="out of the level's range"):
        RF.refine(codec.model, table, images, start - start.max() - 1)  # zigzag values are >= 0
    with pytest.raises(InputError, match="no images"):
        RF.refine(codec.model, table, images[:0], start[:0])
    with pytest.raises(InputError, match="no images"):
        codec.compress(images[:0], refine=True)


def test_no_refinement_for_near_lossless_levels(shipped: C.Codec) -> None:
    codec = shipped
    high = codec.high_levels[0].name
    x = synthetic_images(2, seed=0, shape=codec.model.image_shape)
    with pytest.raises(InputError, match="lossy levels only"):
        codec.compress(x, high, refine=True)
    with pytest.raises(InputError, match="lossy levels only"):
        codec.compress_each(x, high, refine=True)


def test_default_beta_needs_the_levels_rate(codec: C.Codec) -> None:
    table = codec.tables.default
    assert RF.default_beta(table) == pytest.approx(RF.BETA_PER_BIT * table.train_bits_per_image)
    entry = {"name": "x", "steps": table.steps.tolist(), "centers": table.centers.tolist(),
             "frequencies": table.frequencies.tolist()}
    bare = T.QualityTable(0, entry, len(table.steps), "test")
    with pytest.raises(InputError, match="train_bits_per_image"):
        RF.default_beta(bare)
    assert RF.refine(codec.model, bare, synthetic_images(2, seed=1), np.zeros((2, len(table.steps)), np.int64),
                     RF.Search(beta=5.0)).beta == 5.0


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_refine(active_bundle: Path, codec: C.Codec, images: np.ndarray, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "pngs"
    write_pngs(images[:5], folder)
    from edgevae.runtime.images import read_images

    read, _ = read_images([folder], codec.model.image_shape)
    out = tmp_path / "refined.evz"
    done = edgevae("runner", "compress", folder, "-o", out, "--refine", "--quality", "smallest", "--json",
                   "--model", active_bundle)
    assert done.code == 0, done
    assert out.read_bytes() == codec.compress(read, "smallest", refine=True) != codec.compress(read, "smallest")
    back = tmp_path / "back.npy"
    assert edgevae("runner", "decompress", out, "-o", back, "--model", active_bundle).code == 0
    assert np.array_equal(np.load(back), codec.decompress(out.read_bytes()))
    split = edgevae("runner", "compress", folder, "-o", tmp_path / "evz", "--split", "--refine", "--model", active_bundle)
    assert split.code == 0, split
    assert len(list((tmp_path / "evz").glob("*.evz"))) == 5
    assert "--refine" in edgevae("runner", "compress", "--help").stdout


@pytest.mark.parametrize("extra, phrase", [(("--lossless",), "--refine applies to lossy coding only"),
                                           (("--max-error", "4"), "--refine applies to lossy coding only"),
                                           (("--quality", "fine"), "lossy levels only")])
def test_cli_refine_refuses_other_modes(extra: tuple[str, ...], phrase: str, tmp_path: Path) -> None:
    png = tmp_path / "one"
    write_pngs(synthetic_images(1, seed=2, shape=(1, 28, 28)), png)
    done = edgevae("runner", "compress", png, "-o", tmp_path / "x.evz", "--refine", *extra)
    assert_clean_error(done, phrase)
    assert not (tmp_path / "x.evz").exists()


@pytest.mark.slow
def test_web_decodes_refined_containers(shipped: C.Codec, examples: np.ndarray, tmp_path: Path) -> None:
    """web/'s reader (Node) decodes a refined container to Python's pixels: it is an ordinary lossy file."""
    from test_web import evz

    data = shipped.compress(examples, "small", refine=True)
    assert data != shipped.compress(examples, "small")
    (tmp_path / "refined.evz").write_bytes(data)
    result = evz("decompress", tmp_path / "refined.evz", tmp_path / "back.npy")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "back.npy"), shipped.decompress(data))
