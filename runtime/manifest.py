"""The bundle manifest (``model.json``) as data: its schema, its validation and its JSON form.

The schema is a table (:data:`FIELDS`): one :class:`Field` per key, by dotted path, with its
kind, whether it must be there and whether it may be null. :func:`validate` walks the table, then
checks what a table cannot say (the format and its version, ranges, the graphs' described shapes
against the contract); :func:`to_json` is the one way a manifest is written (validated first).
Every refusal is a BundleError naming the field, e.g.
``model.json: graphs.prior must be an object, not null``. web/bundle.js checks the same table;
tests/fixtures/bad-manifests.json holds manifests both must refuse with the same message.

Sections: ``image``, ``latent``, ``likelihood``, ``graphs`` (required); ``codec``, ``prior``
(required when ``graphs.prior`` is), ``novelty``, ``training``, ``evaluation`` (null for a
variant, which has no evaluation of its own), ``role`` (the jobs a shipped bundle is the default
for, see :data:`ROLES`), and free-form records (``versions``, ``parity``, ``variant``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from edgevae.runtime import contract
from edgevae.runtime.errors import BundleError

#: Bounds of the numbers a manifest gives: image side, latent size, mixture components.
MAX_IMAGE_SIDE = 4096
MAX_LATENT_DIM = 4096
MAX_COMPONENTS = 256
#: Image channel counts the runtime handles (gray, RGB).
CHANNELS = (1, 3)

#: The jobs a shipped bundle can be the default for (model.json ``role``: a list of them), each
#: held by exactly one shipped bundle, and how ``edgevae info`` notes it ("": not noted).
ROLES = {
    "default": "",  # what load() and every command without --model use
    "lossless": "compress --lossless's default",  # the best likelihood, exact tables on every engine
    "lossy": "compress's lossy default",  # compress without --lossless (the most PSNR per byte)
    "near-lossless": "--max-error's default",  # like lossless
    "denoise": "denoise's default",  # an encoder trained on noisy images
}

# Kinds of value: what a refusal says a field must be.
OBJECT, STRING, INTEGER, NUMBER, LIST, INTEGERS, STRINGS, SHA256, FILE, INTEGER_ROWS = (
    "an object", "a string", "an integer", "a finite number", "a list", "a list of integers", "a list of strings",
    "64 lowercase hex digits", "a file name", "a list of lists of integers")


@dataclass(frozen=True)
class Field:
    """One key of the manifest: its dotted ``path``, its ``kind`` (one of the constants above),
    whether it must be present when its parent is (``required``, or ``required_if`` another path
    is present) and whether null is allowed (``nullable``)."""

    path: str
    kind: str
    required: bool = False
    nullable: bool = False
    required_if: str | None = None

    @property
    def parent(self) -> str | None:
        """Dotted path of the object holding this field (None at the top level)."""
        return self.path.rsplit(".", 1)[0] if "." in self.path else None

    @property
    def key(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def _graph_fields(key: str, required: bool) -> tuple[Field, ...]:
    return (Field(f"graphs.{key}", OBJECT, required=required), Field(f"graphs.{key}.file", FILE, required=True),
            Field(f"graphs.{key}.sha256", SHA256, required=True), Field(f"graphs.{key}.inputs", LIST),
            Field(f"graphs.{key}.outputs", LIST))


#: The schema of model.json, parents before their children.
FIELDS: tuple[Field, ...] = (
    Field("format", STRING, required=True),
    Field("format_version", INTEGER, required=True),
    Field("name", STRING),
    Field("precision", STRING),
    Field("opset", INTEGER),
    Field("arithmetic", STRING),
    Field("pixel_groups", INTEGER),
    Field("pixel_tile", INTEGER_ROWS),
    Field("image", OBJECT, required=True),
    Field("image.shape", INTEGERS, required=True),
    Field("image.layout", STRING),
    Field("image.dtype", STRING),
    Field("image.pixel_range", INTEGERS),
    Field("latent", OBJECT, required=True),
    Field("latent.dim", INTEGER, required=True),
    Field("latent.prior", STRING),
    Field("likelihood", OBJECT, required=True),
    Field("likelihood.kind", STRING, required=True),
    Field("likelihood.components", INTEGER, required=True),
    Field("likelihood.domain", STRING),
    Field("graphs", OBJECT, required=True),
    *(f for spec in contract.GRAPHS for f in _graph_fields(spec.key, True)),
    *(f for spec in contract.OPTIONAL_GRAPHS for f in _graph_fields(spec.key, False)),
    *_graph_fields(contract.CONTEXT.key, False),  # required with pixel_groups > 1 (validate)
    Field("codec", OBJECT),
    Field("codec.file", FILE, required=True),
    Field("codec.sha256", SHA256, required=True),
    Field("codec.qualities", STRINGS),
    Field("codec.default_quality", STRING),
    Field("prior", OBJECT, required_if=f"graphs.{contract.PRIOR.key}"),
    Field("prior.kind", STRING, required=True),
    Field("prior.noise_dim", INTEGER, required=True),
    Field("prior.description", STRING),
    Field("prior.command", STRING),
    Field("prior.config", OBJECT),
    Field("prior.fitted_on", OBJECT),
    Field("prior.metrics", OBJECT),
    Field("prior.parity", OBJECT),
    Field("prior.versions", OBJECT),
    Field("novelty", OBJECT),
    Field("novelty.threshold", NUMBER, required=True),
    Field("novelty.percentile", NUMBER),
    Field("novelty.complexity", STRING),
    Field("novelty.samples", INTEGER),
    Field("novelty.images", INTEGER),
    Field("novelty.novelty_median", NUMBER),
    Field("novelty.fitted_on", OBJECT),
    Field("training", OBJECT),
    Field("training.command", STRING),
    Field("training.model_config", OBJECT),
    Field("training.train_config", OBJECT),
    Field("training.train_config.dataset", STRING),
    Field("training.train_config.seed", INTEGER),
    Field("training.data", STRING),
    Field("training.epochs_trained", INTEGER),
    Field("training.source_bundle", STRING),
    Field("evaluation", OBJECT, nullable=True),
    Field("evaluation.nelbo_bpd", NUMBER, required=True),
    Field("evaluation.iwae_bpd", NUMBER, required=True),
    Field("evaluation.psnr_db", NUMBER, required=True),
    Field("evaluation.k", INTEGER, required=True),
    Field("evaluation.images", INTEGER, required=True),
    Field("evaluation.seed", INTEGER),
    Field("evaluation.seconds", NUMBER),
    Field("evaluation.data", STRING),
    Field("evaluation.split", STRING),
    # Lossy levels above the codec tables' (runtime/tables.high_quality_levels checks the entries).
    Field("high_quality_levels", LIST),
    Field("role", STRINGS),
    Field("versions", OBJECT),
    Field("parity", OBJECT),
    Field("variant", OBJECT),
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


_CHECKS = {
    OBJECT: lambda v: isinstance(v, dict),
    STRING: lambda v: isinstance(v, str),
    INTEGER: _is_int,
    NUMBER: _is_number,
    LIST: lambda v: isinstance(v, list),
    INTEGERS: lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
    STRINGS: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    SHA256: _is_sha256,
    FILE: lambda v: isinstance(v, str),  # plain-ness is checked by check_file_name
    INTEGER_ROWS: lambda v: isinstance(v, list) and all(isinstance(r, list) and all(_is_int(x) for x in r) for r in v),
}


def describe(value: Any) -> str:
    """How a refusal names a JSON value: ``null``, ``true``, a number as written, else its type
    (web/bundle.js says the same)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def lookup(manifest: dict[str, Any], path: str) -> tuple[bool, Any]:
    """(present, value) of a dotted path; absent if any parent is absent or not an object."""
    value: Any = manifest
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return False, None
        value = value[key]
    return True, value


def check_file_name(name: Any, where: Any) -> str:
    """``name`` if it is a plain file name (no folder part, not ``.``/``..``); else BundleError.

    Checked before anything is opened, so a manifest cannot point outside its bundle.
    """
    import os

    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or os.sep in name or (os.altsep and os.altsep in name) or len(name) > 255):
        raise BundleError(f"{where}: file name {name!r} is not a plain file name inside the bundle folder")
    return name


def check_fields(manifest: dict[str, Any], where: Any, fields: tuple[Field, ...] = FIELDS) -> None:
    """Each of ``fields``: present when required, not null unless nullable, of its kind."""
    for spec in fields:
        parent_present, parent = (True, manifest) if spec.parent is None else lookup(manifest, spec.parent)
        if not parent_present or not isinstance(parent, dict):
            continue  # an absent or null parent: its own field says whether that is allowed
        if spec.key not in parent:
            if spec.required or (spec.required_if is not None and lookup(manifest, spec.required_if)[0]):
                raise BundleError(f"{where}: manifest is incomplete ({spec.path} is missing)")
            continue
        value = parent[spec.key]
        if value is None and spec.nullable:
            continue
        if not _CHECKS[spec.kind](value):
            raise BundleError(f"{where}: {spec.path} must be {spec.kind}, not {describe(value)}")
        if spec.kind == FILE:
            check_file_name(value, where)


def _check_tensors(manifest: dict[str, Any], dims: dict[str, int], where: Any) -> None:
    """The manifest's description of each graph's inputs and outputs, if given, must be the
    contract's for this bundle's dimensions and arithmetic (the graphs themselves are checked when
    loaded)."""
    arithmetic = manifest.get("arithmetic", contract.ARITHMETIC_FLOAT)
    if arithmetic not in contract.ARITHMETICS:
        raise BundleError(f"{where}: arithmetic must be one of {', '.join(contract.ARITHMETICS)}, not {arithmetic!r}")
    for spec in contract.coding_graphs(manifest):
        entry, described = manifest["graphs"][spec.key], spec.describe(dims)
        for side in ("inputs", "outputs"):
            if side in entry and entry[side] != described[side]:
                raise BundleError(f"{where}: {spec.key} {side} {entry[side]!r} disagree with the bundle's own "
                                  f"shapes {described[side]!r}")


def validate(manifest: Any, where: Any = contract.MANIFEST_FILE) -> dict[str, Any]:
    """``manifest`` (parsed JSON) if it is a valid edgevae bundle manifest; else BundleError naming
    the first problem, prefixed by ``where`` (the manifest's path)."""
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise BundleError(f"{where}: not an edgevae bundle manifest")
    check_fields(manifest, where, FIELDS[:2])  # format and format_version, before their values
    if manifest["format"] != contract.MANIFEST_FORMAT:
        raise BundleError(f"{where}: not an edgevae bundle manifest")
    version = manifest["format_version"]
    if version != contract.MANIFEST_VERSION:
        raise BundleError(f"{where}: bundle format version {version} is not supported by this edgevae "
                          f"(supports {contract.MANIFEST_VERSION}); upgrade edgevae or re-export the bundle")
    check_fields(manifest, where)

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise BundleError(f"{where}: {what}")

    shape = manifest["image"]["shape"]
    need(len(shape) == 3, f"image.shape {shape!r} is not three integers")
    c, h, w = shape
    need(c in CHANNELS, f"image.shape has {c} channels, edgevae handles {' or '.join(map(str, CHANNELS))}")
    need(1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE,
         f"image.shape {h}x{w} is not within 1..{MAX_IMAGE_SIDE} pixels a side")
    dim = manifest["latent"]["dim"]
    need(1 <= dim <= MAX_LATENT_DIM, f"latent.dim {dim!r} is not an integer in 1..{MAX_LATENT_DIM}")
    kind = manifest["likelihood"]["kind"]
    need(kind == contract.LIKELIHOOD_KIND, f"unknown likelihood {kind!r}")
    components = manifest["likelihood"]["components"]
    need(1 <= components <= MAX_COMPONENTS, f"likelihood.components {components!r} is not an integer in "
                                            f"1..{MAX_COMPONENTS}")
    noise = None
    if contract.PRIOR.key in manifest["graphs"]:
        noise = manifest["prior"]["noise_dim"]
        need(1 <= noise <= MAX_LATENT_DIM, f"prior.noise_dim {noise!r} is not an integer in 1..{MAX_LATENT_DIM}")
    groups = manifest.get("pixel_groups", 1)
    need("pixel_tile" not in manifest or groups > 1, "pixel_tile needs pixel_groups > 1")
    try:
        tile = contract.pixel_tile(groups, manifest.get("pixel_tile"))
    except ValueError as e:
        raise BundleError(f"{where}: {e}") from None
    need(len(tile) <= h and len(tile[0]) <= w,  # else a group would have no pixels
         f"pixel_tile {len(tile)}x{len(tile[0])} does not fit in the {h}x{w} image")
    has_context = contract.CONTEXT.key in manifest["graphs"]
    need(has_context == (groups > 1), f"graphs.{contract.CONTEXT.key} must be given exactly when pixel_groups > 1")
    for role in manifest.get("role", []):
        need(role in ROLES, f"role {role!r} is not one of {', '.join(ROLES)}")
    _check_tensors(manifest, contract.dims_of(shape, dim, components, noise), where)
    return manifest


def file_entries(manifest: dict[str, Any]) -> dict[str, str]:
    """File name -> sha256 of every file a (validated) manifest names: its graphs and codec tables."""
    entries = list(manifest["graphs"].values()) + ([manifest["codec"]] if manifest.get("codec") else [])
    return {entry["file"]: entry["sha256"] for entry in entries}


def roles_of(manifest: dict[str, Any]) -> list[str]:
    """The jobs a (validated) manifest's bundle is the shipped default for (see :data:`ROLES`)."""
    return list(manifest.get("role", []))


def to_json(manifest: dict[str, Any], where: Any = contract.MANIFEST_FILE) -> bytes:
    """The bytes of ``model.json`` for ``manifest``, validated first (BundleError if it is not valid)."""
    validate(manifest, where)
    return (json.dumps(manifest, indent=2) + "\n").encode()
