"""A bundle is untrusted input: its files stay inside its folder, its JSON is bounded, its numbers
are checked, its graphs are run from the very bytes that were hashed and must match the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgevae.runtime import load
from edgevae.runtime.bundle import MAX_JSON_DEPTH, MAX_MANIFEST_BYTES, read_bundle
from edgevae.runtime.cli import main
from edgevae.runtime.errors import BundleError
from edgevae.runtime.model import EdgeVAE

SHIPPED = Path(__file__).resolve().parent.parent / "exported" / "fashion-mnist"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A private copy of the shipped bundle, to break."""
    target = tmp_path / "bundle"
    shutil.copytree(SHIPPED, target)
    return target


def edit(folder: Path, change) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((folder / "model.json").read_text())
    change(manifest)
    (folder / "model.json").write_text(json.dumps(manifest))


def refused(folder: Path, *phrases: str) -> str:
    """The bundle is refused by the library (BundleError) and by the CLI (one line, exit 2)."""
    with pytest.raises(BundleError) as caught:
        load(folder)
    for phrase in phrases:
        assert phrase in str(caught.value), (phrase, str(caught.value))
    result = CliRunner().invoke(main, ["sample", "-n", "1", "--model", str(folder), "-o", str(folder / "s.png")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and not result.stdout, result.output
    assert not (folder / "s.png").exists()
    return str(caught.value)


# -- staying inside the folder --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "../bundle2/encoder.onnx", "sub/encoder.onnx", "..", "",
                                  "enc\0der.onnx"])
def test_file_names_must_be_plain_names(name: str, bundle: Path, tmp_path: Path) -> None:
    shutil.copytree(bundle, tmp_path / "bundle2")  # a real file where '../bundle2/encoder.onnx' points
    edit(bundle, lambda m: m["graphs"]["encoder"].update(file=name))
    refused(bundle, "not a plain file name")


def test_no_existence_oracle_outside_the_bundle(bundle: Path) -> None:
    """A missing and an existing path outside give the same message: nothing outside is opened."""
    messages = []
    for outside in ("/etc/hostname", "/no/such/file"):
        edit(bundle, lambda m: m["graphs"]["encoder"].update(file=outside))
        messages.append(refused(bundle).replace(outside, "PATH"))
    assert messages[0] == messages[1]


def test_symlink_leading_outside_is_refused(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(bundle / "encoder.onnx", outside)  # the right bytes, sha256 and all
    (bundle / "encoder.onnx").unlink()
    (bundle / "encoder.onnx").symlink_to(outside)
    refused(bundle, "symbolic link leading outside the bundle")


def test_symlink_inside_the_bundle_is_followed(bundle: Path) -> None:
    (bundle / "encoder.onnx").rename(bundle / "encoder-real.onnx")
    (bundle / "encoder.onnx").symlink_to("encoder-real.onnx")
    assert load(bundle).latent_dim == 32


def test_manifest_pointing_at_dev_zero_is_not_read(bundle: Path) -> None:
    (bundle / "model.json").unlink()
    (bundle / "model.json").symlink_to("/dev/zero")
    refused(bundle, "symbolic link leading outside")
    (bundle / "model.json").unlink()
    os.mkfifo(bundle / "model.json")  # would block a reader forever
    refused(bundle, "not a regular file")


def test_huge_manifest_is_refused_by_its_size(bundle: Path) -> None:
    text = (bundle / "model.json").read_text()
    (bundle / "model.json").write_text(text[:-2] + ', "pad": "' + "x" * MAX_MANIFEST_BYTES + '"}')
    refused(bundle, "more than the", "allowed")


def test_deeply_nested_manifest(bundle: Path) -> None:
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        (bundle / "model.json").write_text('{"format": "edgevae-bundle", "x": ' + "[" * depth + "]" * depth + "}")
        refused(bundle, "nested more than")


# -- numbers and shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("change, phrase", [
    (lambda m: m["latent"].update(dim=1e999), "latent.dim"),
    (lambda m: m["latent"].update(dim=float("nan")), "latent.dim"),
    (lambda m: m["latent"].update(dim=32.0), "latent.dim"),
    (lambda m: m["latent"].update(dim=-3), "latent.dim"),
    (lambda m: m["latent"].update(dim=10 ** 12), "latent.dim"),
    (lambda m: m["latent"].update(dim=True), "latent.dim"),
    (lambda m: m["image"].update(shape="abc"), "image.shape"),
    (lambda m: m["image"].update(shape=[1, 28]), "image.shape"),
    (lambda m: m["image"].update(shape=[2, 28, 28]), "channels"),
    (lambda m: m["image"].update(shape=[1, 0, 28]), "image.shape"),
    (lambda m: m["image"].update(shape=[1, 10 ** 9, 28]), "image.shape"),
    (lambda m: m["likelihood"].update(components=0), "likelihood.components"),
    (lambda m: m["graphs"]["decoder"].update(sha256="zz" * 32), "sha256"),
    (lambda m: m.update(evaluation={"nelbo_bpd": "low"}), "evaluation"),
    (lambda m: m.update(name=["x"]), "name"),
    (lambda m: m["codec"].update(file="../codec.json"), "not a plain file name"),
])
def test_manifest_numbers_and_fields_are_validated(change, phrase: str, bundle: Path) -> None:  # type: ignore[no-untyped-def]
    edit(bundle, change)
    refused(bundle, phrase)


def test_manifest_shapes_disagreeing_with_its_dimensions(bundle: Path) -> None:
    """latent.dim edited alone: the graphs' described inputs/outputs no longer agree."""
    edit(bundle, lambda m: m["latent"].update(dim=16))
    refused(bundle, "disagree")


def test_graphs_disagreeing_with_the_manifest_are_refused_at_load(bundle: Path) -> None:
    """A consistent manifest (dims and described shapes edited together) whose graphs have other
    shapes: refused when the sessions are made, not with a broadcast error in sample()."""
    from edgevae.runtime import contract

    def change(m: dict) -> None:  # type: ignore[type-arg]
        m["latent"]["dim"] = 16
        dims = contract.dims_of(m["image"]["shape"], 16, m["likelihood"]["components"])
        for spec in contract.GRAPHS:
            m["graphs"][spec.key].update(spec.describe(dims))

    edit(bundle, change)
    refused(bundle, "the manifest says float32 ['batch', 16]")


def test_a_graph_of_another_bundle_with_its_hash_is_refused(bundle: Path) -> None:
    """decoder.onnx from the codec bundle (24 latent dimensions) with a matching sha256."""
    other = SHIPPED.parent / "fashion-mnist-codec" / "decoder.onnx"
    shutil.copy(other, bundle / "decoder.onnx")
    edit(bundle, lambda m: m["graphs"]["decoder"].update(sha256=hashlib.sha256(other.read_bytes()).hexdigest()))
    refused(bundle, "decoder.onnx", "the manifest says")


# -- the bytes that were hashed are the bytes that run -------------------------------------------------


def test_graphs_run_from_the_hashed_bytes(bundle: Path) -> None:
    """Swapping a file between the check and the session changes nothing: the session is made
    from the bytes that were hashed, never by re-opening the file."""
    verified = read_bundle(bundle)
    expected = load(SHIPPED).sample(3, seed=5)
    other = SHIPPED.parent / "fashion-mnist-int8"
    for name in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(other / name, bundle / name)  # valid graphs, other weights
    np.testing.assert_array_equal(EdgeVAE(verified).sample(3, seed=5), expected)


def test_external_data_is_refused(bundle: Path, tmp_path: Path) -> None:
    """Weights in an external file are not covered by the sha256 (and ONNX Runtime would look for
    them relative to the working directory): such a graph is refused before a session exists."""
    onnx = pytest.importorskip("onnx")  # only to write the test graph; the runtime never imports it
    model = onnx.load(str(bundle / "encoder.onnx"))
    onnx.save(model, str(bundle / "encoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    digest = hashlib.sha256((bundle / "encoder.onnx").read_bytes()).hexdigest()
    edit(bundle, lambda m: m["graphs"]["encoder"].update(sha256=digest))
    refused(bundle, "external data")


def test_a_file_that_is_not_onnx_with_the_right_hash(bundle: Path) -> None:
    (bundle / "encoder.onnx").write_bytes(b"\x0a\xff\xff\xff")
    edit(bundle, lambda m: m["graphs"]["encoder"].update(sha256=hashlib.sha256(b"\x0a\xff\xff\xff").hexdigest()))
    refused(bundle, "encoder.onnx")


def test_deeply_nested_codec_tables_with_their_hash(bundle: Path) -> None:
    """codec.json is bundle input too: nesting deep enough to exhaust Python's recursion is one line."""
    from edgevae.runtime.codec import Codec

    deep = b'{"format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (bundle / "codec.json").write_bytes(deep)
    edit(bundle, lambda m: m["codec"].update(sha256=hashlib.sha256(deep).hexdigest()))
    with pytest.raises(BundleError, match="unreadable codec tables"):
        Codec(load(bundle))


def test_codec_tables_come_from_the_hashed_bytes(bundle: Path) -> None:
    from edgevae.runtime.codec import Codec

    model = load(bundle)
    (bundle / "codec.json").write_bytes(b"swapped after the check")
    assert Codec(model).tables.default.name == "balanced"
