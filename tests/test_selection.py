"""runtime/selection.py: which bundle codes a mode, which bundle made a container, and the errors
when none can vouch for one; the same choices the CLI makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgevae.runtime as ev
from conftest import synthetic_images
from edgevae.runtime import selection
from edgevae.runtime.bundle import shipped_bundle_for_role
from edgevae.runtime.errors import ContainerError, InputError
from test_cli import assert_clean_error, edgevae


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEVAE_MODEL", raising=False)


def test_open_codec_picks_each_modes_default_bundle_and_threads() -> None:
    from edgevae.exported import DEFAULT_BUNDLE, DEFAULT_CODEC_BUNDLE

    lossy = selection.open_codec("lossy")
    assert isinstance(lossy, ev.Codec) and lossy.model.bundle.path == DEFAULT_CODEC_BUNDLE
    lossless = selection.open_codec("lossless")
    assert isinstance(lossless, ev.LosslessCodec) and lossless.model.bundle.path == shipped_bundle_for_role("lossless")
    assert lossless.model.integer  # lossless files of the default decode on every engine (FORMAT.md §7)
    assert lossless.model.sessions["encoder"].get_session_options().intra_op_num_threads == 1  # bits-back runs its own lanes
    assert selection.open_codec("lossy", "fashion-mnist").model.bundle.path == DEFAULT_BUNDLE
    with pytest.raises(InputError, match="unknown compression mode"):
        selection.open_codec("lossy-ish")


def test_the_environment_names_the_model_for_every_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEVAE_MODEL", "fashion-mnist-int8")
    assert selection.open_codec("lossy").model.bundle.name == "fashion-mnist-int8"
    data = selection.open_codec("lossy", "fashion-mnist").compress(synthetic_images(1))
    with pytest.raises(ContainerError, match="another model"):
        selection.codec_for_container(data).decompress(data)


def test_codec_for_container_finds_the_shipped_bundle_and_shares_codecs() -> None:
    images = synthetic_images(2, seed=3)
    made = {name: ev.Codec(ev.load(name)).compress(images) for name in ("fashion-mnist", "fashion-mnist-codec")}
    cache: dict = {}
    for name, data in made.items():
        codec = selection.codec_for_container(data, cache=cache)
        assert codec.model.bundle.name == name
        assert selection.codec_for_container(data, cache=cache) is codec
    lossless = ev.LosslessCodec(ev.load("fashion-mnist", threads=1)).compress(images)
    codec = selection.codec_for_container(lossless)
    assert isinstance(codec, ev.LosslessCodec) and np.array_equal(codec.decompress(lossless), images)


def _damaged_prefix(data: bytes) -> bytes:
    """Byte 2's fingerprint nibble changed: no shipped bundle matches any more."""
    return data[:2] + bytes([data[2] ^ 0x0F]) + data[3:]


def test_a_container_no_bundle_vouches_for_names_both_causes_and_the_fix(tmp_path: Path) -> None:
    data = ev.Codec(ev.load("fashion-mnist-codec")).compress(synthetic_images(2, seed=4))
    damaged = _damaged_prefix(data)
    with pytest.raises(ContainerError) as caught:
        selection.codec_for_container(damaged)
    message = str(caught.value)
    assert "not shipped" in message and "damaged" in message and "--model" in message
    info, bundle = selection.inspect_container(damaged)
    assert bundle is None and not info.vouched and info.count == 2

    (tmp_path / "d.evz").write_bytes(damaged)
    assert_clean_error(edgevae("runner", "decompress", tmp_path / "d.evz", "-o", tmp_path / "d.npy"),
                       "damaged", "not shipped", "--model")
    assert not (tmp_path / "d.npy").exists()
    done = edgevae("runner", "info", tmp_path / "d.evz")
    assert done.code == 2 and "2 image(s)" in done.stdout, done
    assert done.stderr.count("\n") == 1 and "damaged" in done.stderr

    # A container a shipped bundle made is vouched for: info exits 0.
    (tmp_path / "ok.evz").write_bytes(data)
    done = edgevae("runner", "info", tmp_path / "ok.evz")
    assert done.code == 0 and "fingerprint matches, checksum ok" in done.stdout, done


def test_a_damaged_body_is_a_checksum_error_that_names_the_fix(tmp_path: Path) -> None:
    data = bytearray(ev.Codec(ev.load("fashion-mnist-codec")).compress(synthetic_images(3, seed=5)))
    data[-6] ^= 0x40
    (tmp_path / "b.evz").write_bytes(bytes(data))
    # No shipped bundle's checksum holds, so none vouches for it; with --model the checksum fails.
    assert_clean_error(edgevae("runner", "decompress", tmp_path / "b.evz", "-o", tmp_path / "b.npy"),
                       "damaged", "--model")
    assert_clean_error(edgevae("runner", "decompress", tmp_path / "b.evz", "-o", tmp_path / "b.npy",
                               "--model", "fashion-mnist-codec"), "checksum mismatch", "damaged", "another model")
    assert not (tmp_path / "b.npy").exists()
