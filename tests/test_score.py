"""Scores: negative ELBO in bits/dim and the complexity-corrected novelty, through the API and the
CLI; the novelty threshold command; and, on real test images, that novelty separates images the
raw likelihood gets wrong."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

import edgevae.runtime as ev
from edgevae.runtime.likelihood import negative_elbo
from edgevae.runtime.cli import main as cli
from edgevae.runtime.errors import InputError
from edgevae.runtime.novelty import CSV_HEADER, complexity_bits, score
from tests.conftest import synthetic_images, write_pngs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "exported" / "fashion-mnist"


def glyph_images(n: int, seed: int = 0) -> np.ndarray:
    """Letters drawn white on black with Pillow's built-in font: simple images, unlike clothes."""
    rng = np.random.default_rng(seed)
    font = ImageFont.load_default(size=20)
    out = np.zeros((n, 1, 28, 28), np.uint8)
    for i in range(n):
        image = Image.new("L", (28, 28), 0)
        ImageDraw.Draw(image).text((rng.integers(4, 10), rng.integers(0, 5)), chr(rng.integers(65, 91)), fill=255, font=font)
        out[i, 0] = np.asarray(image)
    return out


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    return float((outside[:, None] > inside[None, :]).mean() + 0.5 * (outside[:, None] == inside[None, :]).mean())


def test_score_api_reuses_the_runtime_likelihood(tiny_model: ev.EdgeVAE) -> None:
    images = synthetic_images(6)
    scores = ev.score(tiny_model, images, samples=3, seed=5)
    dims = math.prod(tiny_model.image_shape)
    np.testing.assert_allclose(scores.bits_per_dim, negative_elbo(tiny_model, images, samples=3, seed=5)[0] / dims)
    np.testing.assert_allclose(scores.complexity_bpd, complexity_bits(images) / dims)
    np.testing.assert_allclose(scores.novelty, scores.bits_per_dim - scores.complexity_bpd)
    assert scores.threshold is None and scores.flagged is None  # the tiny bundle records none
    np.testing.assert_array_equal(ev.score(tiny_model, images, samples=3, seed=5).novelty, scores.novelty)


def test_noise_costs_more_bits_than_training_like_images(tiny_model: ev.EdgeVAE) -> None:
    inside = ev.score(tiny_model, synthetic_images(20, seed=9))
    noise = ev.score(tiny_model, np.random.default_rng(0).integers(0, 256, (20, 1, 28, 28), dtype=np.uint8))
    assert noise.bits_per_dim.min() > inside.bits_per_dim.max()
    assert noise.complexity_bpd.min() > inside.complexity_bpd.max()


@pytest.mark.parametrize("images, phrase", [
    (np.zeros((2, 1, 14, 14), np.uint8), "shape"),
    (np.full((1, 1, 28, 28), np.nan), "uint8"),
])
def test_score_rejects_bad_images(tiny_model: ev.EdgeVAE, images: np.ndarray, phrase: str) -> None:
    with pytest.raises(InputError, match=phrase):
        ev.score(tiny_model, images)
    with pytest.raises(InputError, match="samples"):
        score(tiny_model, synthetic_images(1), samples=0)


def test_cli_score_writes_the_csv(tiny_bundle: Path, tmp_path: Path) -> None:
    write_pngs(synthetic_images(3), tmp_path / "in")
    result = CliRunner().invoke(cli, ["score", str(tmp_path / "in"), "-o", str(tmp_path / "s.csv"), "--model", str(tiny_bundle)])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert tuple(rows[0]) == CSV_HEADER == ("name", "bits_per_dim", "novelty")
    assert [r[0] for r in rows[1:]] == ["000", "001", "002"] and all(float(r[1]) > 0 for r in rows[1:])
    result = CliRunner().invoke(cli, ["score", str(tmp_path / "in"), "-o", "-", "--json", "--model", str(tiny_bundle)])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "name,bits_per_dim,novelty" and len(result.stdout.splitlines()) == 4
    summary = json.loads(result.stderr)
    assert summary["count"] == 3 and summary["threshold"] is None


@pytest.mark.parametrize("make, phrase", [
    (lambda d: np.save(d / "x.npy", np.zeros((2, 1, 14, 14), np.uint8)), "expected (N, 1, 28, 28)"),
    (lambda d: (d / "x.npy").write_text("not an array"), "not a valid .npy"),
    (lambda d: None, "no such file"),
])
def test_cli_score_bad_input_exits_2_with_one_line(tiny_bundle: Path, tmp_path: Path, make, phrase: str) -> None:
    make(tmp_path)
    result = CliRunner().invoke(cli, ["score", str(tmp_path / "x.npy"), "-o", str(tmp_path / "s.csv"), "--model", str(tiny_bundle)])
    assert result.exit_code == 2 and phrase in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.csv").exists()


def test_novelty_threshold_command_records_a_percentile(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from edgevae.runtime.bundle import read_bundle
    from edgevae.training.novelty import add_novelty_threshold

    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    before = read_bundle(bundle).fingerprint
    entry = add_novelty_threshold(bundle, percentile=90, count=40, samples=2)
    model = ev.load(bundle)
    assert read_bundle(bundle).fingerprint == before  # the codec's identity is untouched
    assert model.bundle.manifest["novelty"]["threshold"] == entry["threshold"] and entry["images"] == 40
    scores = ev.score(model, synthetic_images(40, seed=11))
    assert scores.threshold == entry["threshold"] and 0 < scores.flagged.mean() < 0.5


@pytest.mark.slow
def test_novelty_separates_simple_images_that_raw_likelihood_prefers() -> None:
    """Nalisnick et al.'s failure on real data: the shipped model gives glyphs *lower* bits/dim
    than clothes; novelty ranks them as out of domain."""
    from edgevae.training.data import load_fashion_mnist

    model = ev.load(DEFAULT_BUNDLE)
    inside = ev.score(model, load_fashion_mnist().test[:150])
    outside = ev.score(model, glyph_images(100))
    assert auroc(inside.bits_per_dim, outside.bits_per_dim) < 0.5
    assert auroc(inside.novelty, outside.novelty) > 0.9
    assert inside.threshold is not None and inside.flagged.mean() <= 0.05


@pytest.mark.slow
def test_noise_scores_more_novel_than_test_images() -> None:
    from edgevae.training.data import load_fashion_mnist

    model = ev.load(DEFAULT_BUNDLE)
    inside = ev.score(model, load_fashion_mnist().test[:100]).novelty
    noise = ev.score(model, np.random.default_rng(0).integers(0, 256, (50, 1, 28, 28), dtype=np.uint8)).novelty
    constant = ev.score(model, np.full((5, 1, 28, 28), 128, np.uint8)).novelty
    assert np.median(noise) > np.quantile(inside, 0.9) and auroc(inside, noise) > 0.95
    assert constant.min() > inside.max()
