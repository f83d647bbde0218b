"""benchmarks/quality_range.py (issue 19's benchmark) on a few synthetic images: the result's
structure, every classical baseline measured on the pixels its own decoder gives back, the
guarantees of the lossless and near-lossless baselines, and its one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "quality_range.py"
sys.path.insert(0, str(SCRIPT.parent))

import edgevae.runtime as ev  # noqa: E402
import quality_range as qr  # noqa: E402
from edgevae.runtime.images import psnr  # noqa: E402


def synthetic_images(n: int = 8) -> np.ndarray:
    """uint8 (n, 1, 28, 28): soft blobs on black with texture, Fashion-MNIST-like in their statistics."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:28, :28]
    out = np.zeros((n, 1, 28, 28), np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(10, 18), rng.uniform(10, 18), rng.uniform(6, 12)
        blob = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0, 1)
        out[i, 0] = np.clip(blob * rng.uniform(120, 255) + (blob > 0) * rng.normal(0, 12, (28, 28)), 0, 255)
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic_images()


@pytest.fixture(scope="module")
def result(images: np.ndarray) -> dict:
    return qr.run(images, threads=1, ood_count=4, log=lambda _: None)


def test_result_structure(result: dict, images: np.ndarray, tmp_path: Path) -> None:
    assert result["images"] == len(images) and result["image_shape"] == [1, 28, 28]
    for baseline in qr.baselines():
        for arrangement, settings in (("per-image", baseline.settings), ("one-file", baseline.mosaic_settings)):
            rows = [r for r in result["classical"] if r["codec"] == baseline.name and r["arrangement"] == arrangement]
            assert [r["setting"] for r in rows] == list(settings), (baseline.name, arrangement)
    # Each edgevae mode is either measured or listed as missing with a reason, never both.
    measured = {(r["mode"], r["setting"]) for r in result["edgevae"] if r["mode"] != "lossy"}
    missing = [m["rows"] for m in result["missing"]]
    for k in qr.MAX_ERRORS:
        listed = f"edgevae near-lossless max_error={k}" in missing
        assert listed != (("near-lossless", k) in measured), k
    assert ("lossless", "lossless") in measured
    lossy = [r for r in result["edgevae"] if r["mode"] == "lossy" and r["bundle"] == result["default_lossy_bundle"]]
    assert lossy and {r["arrangement"] for r in lossy} == {"per-image", "one-file"}
    # The per-image row is the real per-image files: each file holds one image, so (for the levels
    # of the codec tables, whose payloads are the same either way) more bytes than one file of all.
    # The high-quality levels are near-lossless: on a few images, one bits-back file can cost more.
    table_levels = set(ev.open_codec("lossy").lossy_qualities)
    for per_image, together in zip(lossy[::2], lossy[1::2]):
        assert per_image["files"] == len(images) and together["files"] == 1
        if per_image["setting"] in table_levels:
            assert per_image["bytes_per_image"] > together["bytes_per_image"]
    assert {b["bar"].split(":")[0] for b in result["bars"]} >= {"near-lossless"}
    result["command"] = "test"
    paths = qr.write(result, tmp_path)
    assert [p.name for p in paths] == ["rd-range.json", "rd-range.md", "rd-range.png"]
    assert json.loads(paths[0].read_text())["images"] == len(images)
    assert "Issue 19's bars" in paths[1].read_text() and paths[2].stat().st_size > 10_000


def test_every_classical_row_is_its_own_decoded_pixels(result: dict, images: np.ndarray) -> None:
    """Re-encode and decode each baseline's per-image files here: the same bytes and the same PSNR."""
    for baseline in qr.baselines():
        for setting in baseline.settings:
            files = [baseline.encode(image[0], setting) for image in images]
            decoded = np.stack([baseline.decode(f) for f in files])[:, None]
            row = next(r for r in result["classical"] if r["codec"] == baseline.name and r["setting"] == setting
                       and r["arrangement"] == "per-image")
            assert row["bytes_per_image"] == pytest.approx(np.mean([len(f) for f in files]))
            assert row["psnr_db"] == pytest.approx(float(psnr(images, decoded).mean()))
            assert row["max_abs_error"] == int(np.abs(decoded.astype(int) - images).max())


def test_guarantees_of_the_classical_baselines(result: dict) -> None:
    for r in result["classical"]:
        if r["kind"] == "lossless":
            assert r["lossless"] and r["max_abs_error"] == 0 and r["violations"] == 0, r["codec"]
        elif r["kind"] == "near-lossless":
            assert 0 < r["max_abs_error"] <= r["setting"] and r["violations"] == 0, (r["codec"], r["setting"])
        else:
            assert not r["lossless"] and r["promise"] is None
    # A lossy sweep goes up in PSNR as its files grow.
    webp = [r["psnr_db"] for r in result["classical"] if r["codec"] == "WebP" and r["arrangement"] == "per-image"]
    assert webp[-1] > webp[0] + 15


def test_out_of_domain_sets_have_the_shape_asked_for() -> None:
    sets = qr.out_of_domain((3, 20, 36), 5)
    assert set(sets) == {"uniform noise", "all black", "all white", "digits (ImageDraw)"}
    for images in sets.values():
        assert images.dtype == np.uint8 and images.shape[1:] == (3, 20, 36)
    assert sets["digits (ImageDraw)"].max() >= 160 and (sets["digits (ImageDraw)"] == 0).mean() > 0.5


@pytest.mark.parametrize("prelude, argv, message", [
    ("import sys; sys.modules['imagecodecs'] = None", [], "needs the imagecodecs package"),
    ("", ["--update", "--out", "/tmp/x"], "does not go with --out"),
])
def test_refusals_are_one_line_and_exit_2(prelude: str, argv: list[str], message: str) -> None:
    # As `python benchmarks/quality_range.py ...` runs it: its folder first on sys.path.
    code = f"{prelude}\nimport runpy, sys\nsys.path.insert(0, {str(SCRIPT.parent)!r})\n" \
           f"sys.argv = ['quality_range.py', *{argv!r}]\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_reused_rows_give_the_same_report(result: dict, images: np.ndarray) -> None:
    joined = qr.run(images, classical_from=result, edgevae_from=result, log=lambda _: None)
    assert joined["classical"] == result["classical"] and joined["edgevae"] == result["edgevae"]
    assert joined["equal_psnr"] == result["equal_psnr"] and joined["bars"] == result["bars"]
    with pytest.raises(SystemExit, match="other images"):
        qr.run(images[:-1], classical_from=result, edgevae_from=result, log=lambda _: None)


class _RefusesItsOwnFile:
    """A codec whose one-file containers its own decoder refuses (per-image files work)."""

    class model:  # noqa: N801 - stands for the codec's model attribute
        class bundle:  # noqa: N801
            name = "fake"

    def compress_each(self, images: np.ndarray) -> list[bytes]:
        return [b"single"] * len(images)

    def compress(self, images: np.ndarray) -> bytes:
        self.count = len(images)
        return b"all"

    def decompress(self, data: bytes) -> np.ndarray:
        from edgevae.runtime.errors import ContainerError

        if data == b"all":
            raise ContainerError("payload is damaged")
        return np.zeros((1, 1, 28, 28), np.uint8)


def test_a_codec_error_is_a_recorded_failure_not_a_row() -> None:
    black = np.zeros((6, 1, 28, 28), np.uint8)
    mode = qr.Mode("near-lossless", {"max_error": 2}, "max_error", 2)
    rows, failures, times = qr.edgevae_rows(_RefusesItsOwnFile(), black, mode, None)
    assert [r["arrangement"] for r in rows] == ["per-image"] and rows[0]["max_abs_error"] == 0
    assert rows[0]["violations"] == 0 and rows[0]["bytes_per_image"] == len(b"single")
    assert len(failures) == 1 and failures[0]["arrangement"] == "one-file" and failures[0]["images"] == 6
    assert "payload is damaged" in failures[0]["error"] and "compress" in times and "decompress" not in times
