"""The manifest schema (runtime/manifest.py): cases generated from its table of fields, the shared
bad-manifest vectors (tests/fixtures/bad-manifests.json, refused by web/bundle.js with the same
messages), the shipped manifests, roles, and update_manifest's all-or-nothing writes.

Regenerate the vectors after a schema change with ``EDGEVAE_UPDATE_FIXTURES=1 pytest tests/test_manifest.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgevae.runtime import contract
from edgevae.runtime import manifest as schema
from edgevae.runtime.bundle import (
    read_bundle,
    read_manifest,
    shipped_bundle_for_role,
    shipped_bundles,
    update_manifest,
)
from edgevae.runtime.errors import BundleError

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "fixtures" / "bad-manifests.json"
SHIPPED = ROOT / "exported"

#: A value of the wrong type for each kind of field.
WRONG = {schema.OBJECT: "x", schema.STRING: 7, schema.INTEGER: "7", schema.NUMBER: "7", schema.LIST: {},
         schema.INTEGERS: ["1"], schema.STRINGS: [1], schema.SHA256: 7, schema.FILE: 7,
         schema.INTEGER_ROWS: [1]}


def full_manifest() -> dict[str, Any]:
    """A small valid manifest in which every field of the schema is present."""
    dims = contract.dims_of([1, 8, 8], 4, 2, noise=4)

    def graph(spec: contract.GraphSpec, fill: str) -> dict[str, Any]:
        return {**spec.describe(dims), "sha256": fill * 64}

    manifest: dict[str, Any] = {
        "format": contract.MANIFEST_FORMAT, "format_version": contract.MANIFEST_VERSION, "name": "tiny",
        "precision": "fp32", "opset": contract.OPSET, "arithmetic": contract.ARITHMETIC_FLOAT, "pixel_groups": 2,
        "pixel_tile": [[0, 1]], "image": {"shape": [1, 8, 8], "layout": "NCHW", "dtype": "uint8", "pixel_range": [0, 255]},
        "latent": {"dim": 4, "prior": "standard normal N(0, I)"},
        "likelihood": {"kind": contract.LIKELIHOOD_KIND, "components": 2, "domain": "normalized"},
        "graphs": {"encoder": graph(contract.ENCODER, "a"), "decoder": graph(contract.DECODER, "b"),
                   "prior": graph(contract.PRIOR, "c"), "context": graph(contract.CONTEXT, "e")},
        "codec": {"file": "codec.json", "sha256": "d" * 64, "qualities": ["small"], "default_quality": "small"},
        "prior": {"kind": "flow", "noise_dim": 4, "description": "a flow", "command": "edgevae-train prior",
                  "config": {}, "fitted_on": {}, "metrics": {}, "parity": {}, "versions": {}},
        "novelty": {"threshold": 0.5, "percentile": 99.0, "complexity": "png-zlib9", "samples": 4, "images": 10,
                    "novelty_median": 0.1, "fitted_on": {}},
        "training": {"command": "edgevae-train train", "model_config": {},
                     "train_config": {"dataset": "fashion-mnist", "seed": 0}, "data": "fashion-mnist",
                     "epochs_trained": 1, "source_bundle": "fashion-mnist"},
        "evaluation": {"nelbo_bpd": 3.0, "iwae_bpd": 2.9, "psnr_db": 20.0, "k": 4, "images": 10, "seed": 0,
                       "seconds": 1.5, "data": "fashion-mnist", "split": "test"},
        "high_quality_levels": [{"name": "fine", "max_error": 8, "description": "within 8 levels"}],
        "role": ["default"], "versions": {}, "parity": {}, "variant": {},
    }
    present = {f.path for f in schema.FIELDS if schema.lookup(manifest, f.path)[0]}
    assert present == {f.path for f in schema.FIELDS}, "full_manifest() lacks " + ", ".join(
        sorted({f.path for f in schema.FIELDS} - present))
    return manifest


def apply(base: dict[str, Any], case: dict[str, Any]) -> Any:
    """``base`` with one change: ``path`` set to ``value``, or deleted with ``delete``."""
    manifest = copy.deepcopy(base)
    *parents, key = case["path"].split(".")
    section = manifest
    for name in parents:
        section = section[name]
    if case.get("delete"):
        del section[key]
    else:
        section[key] = case["value"]
    return manifest


def generated_cases() -> list[dict[str, Any]]:
    """For every field: null and a wrong type (refused by name unless null is allowed), and missing
    when required; then cases a table cannot state (values, ranges, names)."""
    cases: list[dict[str, Any]] = []
    for field in schema.FIELDS:
        if not field.nullable:
            cases.append({"path": field.path, "value": None, "message": f"{field.path} must be {field.kind}, not null"})
        bad = WRONG[field.kind]
        cases.append({"path": field.path, "value": bad,
                      "message": f"{field.path} must be {field.kind}, not {schema.describe(bad)}"})
        if field.required or field.required_if:
            missing = "not an edgevae bundle manifest" if field.path == "format" else \
                f"manifest is incomplete ({field.path} is missing)"
            cases.append({"path": field.path, "delete": True, "message": missing})
    for case in cases:
        case["message"] = f"model.json: {case['message']}"
    cases += [{"path": path, "value": value, "message": f"model.json: {message}"} for path, value, message in (
        ("format", "other", "not an edgevae bundle manifest"),
        ("format_version", 99, "bundle format version 99 is not supported by this edgevae (supports 1); "
                               "upgrade edgevae or re-export the bundle"),
        ("image.shape", [1, 8], "image.shape [1, 8] is not three integers"),
        ("image.shape", [2, 8, 8], "image.shape has 2 channels, edgevae handles 1 or 3"),
        ("image.shape", [1, 0, 8], "image.shape 0x8 is not within 1..4096 pixels a side"),
        ("latent.dim", 0, "latent.dim 0 is not an integer in 1..4096"),
        ("likelihood.kind", "bernoulli", "unknown likelihood 'bernoulli'"),
        ("likelihood.components", 300, "likelihood.components 300 is not an integer in 1..256"),
        ("prior.noise_dim", -1, "prior.noise_dim -1 is not an integer in 1..4096"),
        ("graphs.encoder.sha256", "zz" * 32, "graphs.encoder.sha256 must be 64 lowercase hex digits, not a string"),
        ("graphs.decoder.file", "../decoder.onnx",
         "file name '../decoder.onnx' is not a plain file name inside the bundle folder"),
        ("codec.file", "", "file name '' is not a plain file name inside the bundle folder"),
        ("role", ["everything"], "role 'everything' is not one of default, lossless, lossy, near-lossless, denoise"),
        ("pixel_groups", 3, "pixel_tile must hold every group 0..2 and no other number"),
        ("pixel_groups", 65, "pixel_groups 65 is not an integer in 1..64"),
        ("pixel_tile", [[0, 1], [1]], "pixel_tile must be 1..8 rows of 1..8 group numbers, all rows as long"),
        ("pixel_tile", [], "pixel_tile must be 1..8 rows of 1..8 group numbers, all rows as long"),
        ("pixel_tile", [[0] * 9], "pixel_tile must be 1..8 rows of 1..8 group numbers, all rows as long"),
        ("pixel_tile", [[0, 2]], "pixel_tile must hold every group 0..1 and no other number"),
        ("pixel_tile", [[0, 0]], "pixel_tile must hold every group 0..1 and no other number"),
        ("image.shape", [1, 8, 1], "pixel_tile 1x2 does not fit in the 8x1 image"),
        ("pixel_groups", 1, "pixel_tile needs pixel_groups > 1"),
        # an integer context bundle is valid, but then every graph must be described as the integer one
        ("arithmetic", "integer", "encoder outputs [{'name': 'mean', 'dtype': 'float32', 'shape': ['batch', 4]}, "
                                  "{'name': 'logvar', 'dtype': 'float32', 'shape': ['batch', 4]}] disagree with the "
                                  "bundle's own shapes [{'name': 'mean_index', 'dtype': 'int32', 'shape': ['batch', 4]}, "
                                  "{'name': 'logvar_index', 'dtype': 'int32', 'shape': ['batch', 4]}]"),
    )]
    return cases


def vectors() -> dict[str, Any]:
    return {"about": "Manifests web/bundle.js and runtime/manifest.py must refuse with exactly these messages "
                     "(where = 'model.json'): the base manifest with one change each. Generated by "
                     "tests/test_manifest.py (EDGEVAE_UPDATE_FIXTURES=1).",
            "base": full_manifest(), "cases": generated_cases()}


def test_the_shared_vectors_are_generated_from_the_schema() -> None:
    wanted = json.dumps(vectors(), indent=1) + "\n"
    if os.environ.get("EDGEVAE_UPDATE_FIXTURES"):
        VECTORS.write_text(wanted)
    assert VECTORS.read_text() == wanted, "schema changed: regenerate with EDGEVAE_UPDATE_FIXTURES=1"


def test_the_full_manifest_is_valid() -> None:
    schema.validate(full_manifest())


@pytest.mark.parametrize("case", generated_cases(), ids=lambda c: f"{c['path']}={json.dumps(c.get('value'))}"
                                                               + ("-missing" if c.get("delete") else ""))
def test_every_field_refused_by_name(case: dict[str, Any]) -> None:
    with pytest.raises(BundleError) as caught:
        schema.validate(apply(full_manifest(), case), "model.json")
    assert str(caught.value) == case["message"]


@pytest.mark.parametrize("field", [f for f in schema.FIELDS if f.nullable], ids=lambda f: f.path)
def test_nullable_fields_take_null(field: schema.Field) -> None:
    schema.validate(apply(full_manifest(), {"path": field.path, "value": None}))


@pytest.mark.parametrize("field", [f for f in schema.FIELDS if not f.required and not f.required_if],
                         ids=lambda f: f.path)
def test_optional_fields_may_be_absent(field: schema.Field) -> None:
    manifest = apply(full_manifest(), {"path": field.path, "delete": True})
    if field.path.startswith("graphs.prior") and field.path != "graphs.prior":
        return  # inside the prior graph's entry, file and sha256 are required (tested above)
    if field.path in ("pixel_groups", "graphs.context"):
        # they come together: the one alone is refused (tests/test_context.py); both may go
        with pytest.raises(BundleError, match="pixel_tile needs pixel_groups > 1|graphs.context must be given "
                                              "exactly when pixel_groups > 1"):
            schema.validate(manifest)
        manifest = apply(manifest, {"path": "graphs.context" if field.path == "pixel_groups" else "pixel_groups",
                                    "delete": True})
        manifest = apply(manifest, {"path": "pixel_tile", "delete": True})
    schema.validate(manifest)


def test_to_json_validates_and_round_trips() -> None:
    manifest = full_manifest()
    assert json.loads(schema.to_json(manifest)) == manifest
    with pytest.raises(BundleError, match="latent.dim must be an integer, not null"):
        schema.to_json(apply(manifest, {"path": "latent.dim", "value": None}))


# -- shipped bundles and roles ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(shipped_bundles()))
def test_shipped_manifests_are_valid_and_round_trip(name: str) -> None:
    manifest = read_manifest(SHIPPED / name).manifest
    assert schema.to_json(manifest) == (SHIPPED / name / "model.json").read_bytes()


def test_each_role_is_held_by_one_shipped_bundle() -> None:
    held = {role: shipped_bundle_for_role(role).name for role in schema.ROLES}
    assert held == {"default": "fashion-mnist", "lossless": "fashion-mnist-exact", "lossy": "fashion-mnist-codec",
                    "near-lossless": "fashion-mnist-exact",
                    "denoise": "fashion-mnist-denoise"}
    with pytest.raises(BundleError, match="unknown bundle role"):
        shipped_bundle_for_role("upscale")


def test_role_is_not_part_of_the_fingerprint(tmp_path: Path) -> None:
    copy_ = tmp_path / "b"
    shutil.copytree(SHIPPED / "fashion-mnist", copy_)
    before = read_bundle(copy_).fingerprint
    update_manifest(copy_, {"role": None})
    assert "role" not in read_bundle(copy_).manifest and read_bundle(copy_).fingerprint == before


# -- update_manifest ------------------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(SHIPPED / "fashion-mnist-codec", target)
    return target


def test_update_manifest_writes_files_and_manifest_together(bundle: Path) -> None:
    tables = (bundle / "codec.json").read_bytes().replace(b'"balanced"', b'"balanced" ', 1)
    entry = {**read_bundle(bundle).manifest["codec"], "sha256": hashlib.sha256(tables).hexdigest()}
    update_manifest(bundle, {"codec": entry}, files={"codec.json": tables})
    assert (bundle / "codec.json").read_bytes() == tables
    assert read_bundle(bundle).manifest["codec"] == entry  # hashes check out


def test_update_manifest_refuses_an_invalid_change_and_writes_nothing(bundle: Path) -> None:
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    with pytest.raises(BundleError, match="novelty.threshold must be a finite number, not null"):
        update_manifest(bundle, {"novelty": {"threshold": None}}, files={"codec.json": b"{}"})
    with pytest.raises(BundleError, match="does not record this file with its sha256"):
        update_manifest(bundle, {"name": "renamed"}, files={"codec.json": b"{}"})
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_update_manifest_is_all_or_nothing(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second replacement fails: the first (codec.json) is put back, so the hashes still match."""
    import edgevae.runtime.outputs as outputs

    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    tables = b'{"changed": true}\n'
    entry = {**read_bundle(bundle).manifest["codec"], "sha256": hashlib.sha256(tables).hexdigest()}
    real_replace, calls = os.replace, []

    def failing_replace(src: Any, dst: Any) -> None:
        calls.append(dst)
        if str(dst).endswith("model.json") and not str(src).endswith(".bak"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", failing_replace)
    with pytest.raises(Exception, match="No space left"):
        update_manifest(bundle, {"codec": entry}, files={"codec.json": tables})
    monkeypatch.undo()
    # Every file, hidden ones included: no backup or temporary file is left beside the targets.
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    read_bundle(bundle)  # still verifies


def test_a_null_prior_graph_is_one_line_for_sample(tmp_path: Path) -> None:
    """Issue 23's case: "graphs": {..., "prior": null} was a TypeError in `edgevae sample`."""
    from click.testing import CliRunner

    from edgevae.runtime.cli import main

    folder = tmp_path / "b"
    shutil.copytree(SHIPPED / "fashion-mnist", folder)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["graphs"]["prior"] = None
    (folder / "model.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["sample", "-n", "2", "--model", str(folder), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and result.stderr.strip() == \
        f"Error: {folder / 'model.json'}: graphs.prior must be an object, not null", result.output
    assert not (tmp_path / "x.png").exists()
