"""Files outlive releases: containers made by earlier releases decode to the same pixels today.

tests/fixtures/release-*/ holds containers made with the shipped bundles of a past release
(every quality level, multi- and single-image, lossless), the pixels that release decoded from
them, and the inputs. A container made with a shipped bundle must decode in every later release,
so these files are never regenerated: a new release adds a folder beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgevae.runtime as ev
from edgevae.runtime.cli import main

RELEASES = sorted((Path(__file__).parent / "fixtures").glob("release-*"))
CASES = [(release, entry) for release in RELEASES
         for entry in json.loads((release / "manifest.json").read_text())["containers"]]


def _expected(release: Path, entry: dict) -> np.ndarray:
    with np.load(release / "pixels.npz") as pixels:
        return pixels[entry["pixels"]][: entry["count"]]


def test_fixtures_exist() -> None:
    assert RELEASES and len(CASES) >= 40


@pytest.mark.parametrize("release,entry", CASES, ids=[f"{r.name}/{e['file']}" for r, e in CASES])
def test_past_container_decodes_to_the_same_pixels(release: Path, entry: dict) -> None:
    data = (release / entry["file"]).read_bytes()
    # the codec of the container's mode: a bundle without lossy tables (a context bundle) has no Codec
    codec = ev.codec_for_container(data, model=entry["bundle"], threads=1)
    assert np.array_equal(codec.decompress(data), _expected(release, entry))


@pytest.mark.slow
@pytest.mark.parametrize("release", RELEASES, ids=[r.name for r in RELEASES])
def test_past_containers_decode_by_cli_without_model(release: Path, tmp_path: Path) -> None:
    """decompress finds, per container, the shipped bundle that made it."""
    for entry in json.loads((release / "manifest.json").read_text())["containers"]:
        if entry["count"] == 1 and entry["quality"] not in (0, None):
            continue  # one single-image container per bundle is enough here
        out = tmp_path / (entry["file"] + ".npy")
        result = CliRunner().invoke(main, ["decompress", str(release / entry["file"]), "-o", str(out)])
        assert result.exit_code == 0, (entry["file"], result.output)
        assert np.array_equal(np.load(out), _expected(release, entry)), entry["file"]
