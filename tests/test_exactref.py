"""A C program written from docs/FORMAT.md §7.3-§7.4 alone (benchmarks/exactref/exactref.c)
builds the exact table set bit for bit as runtime/exact.py does: every table's CRC-32, the
fingerprint, and the per-symbol tables a coder builds for network outputs (random, extreme, one
and several components, two bucket precisions). Compiled with -ffp-contract=off, as §7.3 asks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import exacttables as et  # noqa: E402


@pytest.fixture(scope="module")
def exactref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return et.build(tmp_path_factory.mktemp("exactref"))


@pytest.mark.parametrize("bucket_bits", [6, 11, 16])
def test_every_table_and_the_fingerprint_match_the_reference(exactref: Path, bucket_bits: int) -> None:
    got = et.run(exactref, bucket_bits)
    want = et.python_crcs(bucket_bits)
    assert {k: got[k] for k in want} == want


def _outputs(rng: np.random.Generator, components: int, extreme: bool, n: int = 2, dims: int = 8, pixels: int = 64) -> et.Outputs:
    def draw(lo: int, hi: int, shape: tuple[int, ...]) -> np.ndarray:
        if extreme:  # the ends of every range, where clamps and the 2**53 argument of §7.4 matter
            return rng.choice(np.array([lo, hi, lo + 1, hi - 1, (lo + hi) // 2]), shape)
        return rng.integers(lo, hi + 1, shape)

    mixture = (n, components, pixels)
    return et.Outputs(draw(-8192, 8192, (n, dims)), draw(0, 2048, (n, dims)), draw(-512, 512, mixture),
                      draw(0, 8160, mixture), draw(0, 128, mixture), draw(0, 255, (n, pixels)).astype(np.uint8))


@pytest.mark.parametrize("components", [1, 2, 5])
@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("bucket_bits", [7, 16])
def test_per_symbol_tables_match_the_reference(exactref: Path, tmp_path: Path, components: int, extreme: bool,
                                               bucket_bits: int) -> None:
    outputs = _outputs(np.random.default_rng(components * 10 + extreme), components, extreme)
    got = et.run(exactref, bucket_bits, outputs, tmp_path)
    assert got["images"] == 2
    assert got["symbol tables crc"] == et.symbol_tables_crc(bucket_bits, outputs)


def test_a_different_table_is_caught(exactref: Path, tmp_path: Path) -> None:
    """The comparison can fail: one changed network output changes the CRC of its tables."""
    outputs = _outputs(np.random.default_rng(0), 2, False)
    before = et.run(exactref, 16, outputs, tmp_path)["symbol tables crc"]
    outputs.log_scale_index[0, 0, 0] = (outputs.log_scale_index[0, 0, 0] + 7) % 129
    outputs.pixels[0, 0] = 128
    assert et.run(exactref, 16, outputs, tmp_path)["symbol tables crc"] != before
