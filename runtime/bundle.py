"""Finding, reading and verifying model bundles (``model.json`` + the ONNX files it names).

A bundle is resolved in one place: an explicit path (or the name of a bundle shipped in
:mod:`edgevae.exported`, such as ``fashion-mnist-int8``), else ``$EDGEVAE_MODEL``, else the
default shipped bundle.

A bundle is untrusted input (it may come from anywhere), so before any ONNX session exists:

- the manifest is read with a size limit and a nesting limit, and validated against its schema
  (:mod:`edgevae.runtime.manifest`): types, finite numbers in sane bounds, file names;
- the files it names must be plain names inside the bundle folder (no separator, no ``..``,
  no symbolic link leading out of the folder, regular files of bounded size): no path outside
  the bundle is ever opened, so an error cannot tell what exists elsewhere;
- each file is read once, checked against its sha256, and those very bytes are what the
  runtime uses (graphs are handed to ONNX Runtime as bytes, never re-opened by name);
- a graph that keeps tensors in external data files is refused: those files are not hashed,
  and ONNX Runtime would look for them relative to the working directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgevae.runtime import contract, manifest as schema
from edgevae.runtime.errors import BundleError
from edgevae.runtime.manifest import check_file_name

#: Environment variable naming a bundle folder to use instead of the shipped default.
MODEL_ENV = "EDGEVAE_MODEL"

#: Largest model.json read (the shipped ones are ~7 KB).
MAX_MANIFEST_BYTES = 1 << 20
#: Largest codec.json read (the shipped ones are < 64 KB).
MAX_TABLES_BYTES = 16 << 20
#: Largest ONNX graph read.
MAX_GRAPH_BYTES = 1 << 30
#: Deepest nesting of JSON arrays and objects accepted (the manifests need 6).
MAX_JSON_DEPTH = 32


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder and parsed manifest."""

    path: Path
    manifest: dict[str, Any]
    #: The verified bytes of the bundle's files by manifest key (``encoder``, ``decoder``,
    #: ``codec``), as :func:`read_bundle` read and hashed them.
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's images."""
        c, h, w = self.manifest["image"]["shape"]
        return int(c), int(h), int(w)

    @property
    def latent_dim(self) -> int:
        """Size of a latent vector."""
        return int(self.manifest["latent"]["dim"])

    @property
    def components(self) -> int:
        """Mixture components per pixel of the decoder's likelihood."""
        return int(self.manifest["likelihood"]["components"])

    @property
    def precision(self) -> str:
        """Numeric precision of the graphs (``fp32``, ``int8``, ``fp16``)."""
        return str(self.manifest.get("precision", "fp32"))

    @property
    def arithmetic(self) -> str:
        """How the graphs compute (model.json ``arithmetic``): ``float`` (absent) or ``integer``."""
        return str(self.manifest.get("arithmetic", contract.ARITHMETIC_FLOAT))

    @property
    def pixel_groups(self) -> int:
        """Groups the likelihood codes pixels in (model.json ``pixel_groups``; 1, absent: all at once)."""
        return int(self.manifest.get("pixel_groups", 1))

    @property
    def pixel_tile(self) -> contract.Tile:
        """The tile of group numbers that repeats over the image (model.json ``pixel_tile``, absent:
        the default of ``pixel_groups``; runtime/contract.py PIXEL_GROUP_TILES)."""
        return contract.pixel_tile(self.pixel_groups, self.manifest.get("pixel_tile"))

    @property
    def name(self) -> str:
        """Human-readable bundle name."""
        return str(self.manifest.get("name", self.path.name))

    @property
    def roles(self) -> list[str]:
        """The jobs this bundle is the shipped default for (model.json ``role``; see manifest.ROLES)."""
        return schema.roles_of(self.manifest)

    def graph_path(self, spec: contract.GraphSpec) -> Path:
        """Path of one of the bundle's ONNX files (a plain name inside the folder, checked)."""
        return self.path / self.manifest["graphs"][spec.key]["file"]

    def graph_bytes(self, spec: contract.GraphSpec) -> bytes:
        """The verified bytes of one of the bundle's ONNX files: those :func:`read_bundle` hashed,
        else read now (inside the folder only) and checked against the manifest's sha256."""
        if spec.key in self.files:
            return self.files[spec.key]
        entry = self.manifest["graphs"][spec.key]
        return read_verified(self.path, entry["file"], entry["sha256"], MAX_GRAPH_BYTES)

    @property
    def prior_kind(self) -> str | None:
        """Kind of the bundle's learned sampling prior (``prior.onnx``), or None: N(0, I)."""
        return str(self.manifest["prior"]["kind"]) if contract.PRIOR.key in self.manifest["graphs"] else None

    @property
    def prior_noise_dim(self) -> int | None:
        """Size of the learned prior's noise input, or None without a learned prior."""
        return int(self.manifest["prior"]["noise_dim"]) if self.prior_kind is not None else None

    def optional_graph_bytes(self, spec: contract.GraphSpec) -> bytes:
        """The verified bytes of an optional graph the manifest names (``prior.onnx``), checked like
        the required ones (inside the folder, sha256 as recorded, no external data) but when first
        used, not by :func:`read_bundle`, so encoding or compressing never pays for them."""
        if spec.key not in self.files:
            entry = self.manifest["graphs"][spec.key]
            data = read_verified(self.path, entry["file"], entry["sha256"], MAX_GRAPH_BYTES)
            refuse_external_data(data, self.path / entry["file"])
            self.files[spec.key] = data
        return self.files[spec.key]

    @property
    def codec_path(self) -> Path | None:
        """Path of the codec's entropy-model tables (``codec.json``), or None if the bundle has none."""
        entry = self.manifest.get("codec")
        return self.path / entry["file"] if entry else None

    @property
    def fingerprint(self) -> bytes:
        """32-byte identity of the exact graphs and codec tables: sha256 over the sha256s of the graphs
        the codecs compute with (encoder, decoder, and a context bundle's context graph), in
        contract order, then the sha256 of a given ``pixel_tile`` (its contract.tile_text), then the
        codec tables' sha256 if the bundle has them. Optional graphs (a learned prior) are left out:
        adding one must not orphan containers."""
        digest = hashlib.sha256()
        for spec in contract.coding_graphs(self.manifest):
            digest.update(bytes.fromhex(self.manifest["graphs"][spec.key]["sha256"]))
        if "pixel_tile" in self.manifest:  # the same context graph under another tile is another model
            digest.update(hashlib.sha256(contract.tile_text(self.pixel_tile).encode()).digest())
        if self.manifest.get("codec"):
            digest.update(bytes.fromhex(self.manifest["codec"]["sha256"]))
        return digest.digest()


def shipped_bundle_for_role(role: str) -> Path:
    """The folder of the shipped bundle whose manifest claims ``role`` (model.json ``role``, one of
    :data:`edgevae.runtime.manifest.ROLES`); BundleError unless exactly one does."""
    if role not in schema.ROLES:
        raise BundleError(f"unknown bundle role {role!r}; roles: {', '.join(schema.ROLES)}")
    holders = [folder for folder in shipped_bundles().values() if role in read_manifest(folder).roles]
    if len(holders) != 1:
        held = ", ".join(p.name for p in holders) or "none"
        raise BundleError(f"the shipped bundles must hold role {role!r} exactly once (held by: {held})")
    return holders[0]


def default_bundle_path() -> Path:
    """The shipped bundle every command uses without --model (role ``default``)."""
    from edgevae.exported import DEFAULT_BUNDLE

    return DEFAULT_BUNDLE


def default_codec_bundle_path() -> Path:
    """The shipped bundle trained for lossy compression (role ``lossy``: ``edgevae compress``'s default)."""
    from edgevae.exported import DEFAULT_CODEC_BUNDLE

    return DEFAULT_CODEC_BUNDLE


def default_denoise_bundle_path() -> Path:
    """The shipped bundle trained for denoising (role ``denoise``: ``edgevae denoise``'s default)."""
    from edgevae.exported import DEFAULT_DENOISE_BUNDLE

    return DEFAULT_DENOISE_BUNDLE


def shipped_bundles() -> dict[str, Path]:
    """Name -> folder of every bundle shipped inside the package."""
    from edgevae.exported import BUNDLES

    return {p.name: p for p in sorted(BUNDLES.iterdir()) if (p / contract.MANIFEST_FILE).is_file()}


def describe_shipped() -> str:
    """The shipped bundles by name, each with the jobs it is the default for (``edgevae info``)."""
    names = []
    for name, folder in shipped_bundles().items():
        notes = [schema.ROLES[r] for r in read_manifest(folder).roles if schema.ROLES[r]]
        names.append(name + (f" ({'; '.join(notes)})" if notes else ""))
    return ", ".join(names)


def resolve_path(path: str | os.PathLike[str] | None) -> Path:
    """Explicit path, else ``$EDGEVAE_MODEL``, else the shipped default bundle.

    A path that does not exist but is the bare name of a shipped bundle (``fashion-mnist-int8``)
    means that bundle: an installed package's bundles have no convenient path of their own.
    A folder of that name in the working directory wins.
    """
    chosen = path if path is not None else os.environ.get(MODEL_ENV) or None
    if chosen is None:
        return default_bundle_path()
    folder = Path(chosen)
    if not folder.exists() and len(folder.parts) == 1:
        return shipped_bundles().get(folder.name, folder)
    return folder


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_JSON_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(data: bytes, where: Path | str, what: str) -> Any:
    """Parse bundle JSON (manifest or codec tables); BundleError if it is not valid JSON or is
    nested deeper than MAX_JSON_DEPTH."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise BundleError(f"{where}: unreadable {what} (nested more than {MAX_JSON_DEPTH} levels deep)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{where}: unreadable {what} ({type(e).__name__})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise BundleError(f"{where}: unreadable {what} (nested more than {MAX_JSON_DEPTH} levels deep)")
    return value


def read_inside(folder: Path, name: str, limit: int) -> bytes:
    """The bytes of file ``name`` of bundle ``folder``, opened inside the folder only.

    ``name`` must be a plain name; a symbolic link is followed only to a file in the same folder;
    the file must be a regular file of at most ``limit`` bytes (so /dev/zero or a FIFO is refused
    without reading). BundleError otherwise, or if it is missing.
    """
    check_file_name(name, folder)
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise BundleError(f"{folder}: cannot open the bundle folder ({e.strerror})") from None
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            # A symbolic link: allowed only to another plain file of this same folder.
            real = Path(os.path.realpath(folder / name))
            if real.parent != Path(os.path.realpath(folder)):
                raise BundleError(f"{folder / name}: is a symbolic link leading outside the bundle folder") from None
            fd = os.open(real.name, flags, dir_fd=dir_fd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BundleError(f"{folder / name}: is not a regular file")
            if info.st_size > limit:
                raise BundleError(f"{folder / name}: is {info.st_size:,} bytes, more than the {limit:,} allowed")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise BundleError(f"{folder / name}: is more than the {limit:,} bytes allowed")
            return data
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise BundleError(f"{folder}: bundle is partial, {name} is missing") from None
    except OSError as e:
        raise BundleError(f"{folder / name}: cannot read ({e.strerror})") from None
    finally:
        os.close(dir_fd)


def read_verified(folder: Path, name: str, sha256: str, limit: int) -> bytes:
    """:func:`read_inside`, then checked against ``sha256`` (hex); BundleError if it differs."""
    data = read_inside(folder, name, limit)
    if sha256_bytes(data) != sha256:
        raise digest_mismatch(folder / name)
    return data


def read_manifest(folder: Path) -> Bundle:
    """A bundle from its checked manifest alone: its files are not hashed (see :func:`read_bundle`).

    Enough for its name, shapes and fingerprint, which come from the manifest.
    """
    if not folder.is_dir():
        names = ", ".join(shipped_bundles())
        raise BundleError(f"{folder}: no such model bundle folder (shipped bundles by name: {names})")
    manifest_path = folder / contract.MANIFEST_FILE
    try:
        raw = read_inside(folder, contract.MANIFEST_FILE, MAX_MANIFEST_BYTES)
    except BundleError as e:
        if not os.path.lexists(manifest_path):
            raise BundleError(f"{folder}: not a model bundle (no {contract.MANIFEST_FILE})") from None
        raise e from None
    manifest = schema.validate(parse_json(raw, manifest_path, "manifest"), manifest_path)
    return Bundle(folder, manifest)


def read_bundle(path: str | os.PathLike[str] | None = None) -> Bundle:
    """Read and verify a bundle folder (or the default). Raises BundleError on any problem.

    Every file the manifest names is read once (inside the folder only) and checked against its
    sha256; the graphs must not use external data. The returned bundle keeps those bytes.
    """
    bundle = read_manifest(resolve_path(path))
    folder, manifest = bundle.path, bundle.manifest
    files: dict[str, bytes] = {}
    for spec in contract.coding_graphs(manifest):
        entry = manifest["graphs"][spec.key]
        data = read_verified(folder, entry["file"], entry["sha256"], MAX_GRAPH_BYTES)
        refuse_external_data(data, folder / entry["file"])
        files[spec.key] = data
    if manifest.get("codec"):
        files["codec"] = read_verified(folder, manifest["codec"]["file"], manifest["codec"]["sha256"], MAX_TABLES_BYTES)
    return Bundle(folder, manifest, files)


def update_manifest(bundle: Bundle | str | os.PathLike[str], changes: Mapping[str, Any],
                    files: Mapping[str, bytes] | None = None) -> Bundle:
    """Change sections of a bundle's model.json and write every file of the change all or nothing.

    ``changes`` maps a dotted manifest path (``codec``, ``graphs.prior``, ``novelty``) to its new
    entry (None removes it); ``files`` maps plain file names to the new bytes the entries record
    (``codec.json``, ``prior.onnx``), each with its sha256 in the new manifest. The new manifest is
    validated first; then the files and model.json are replaced together by
    :func:`edgevae.runtime.outputs.write_files`, so an interruption leaves the old bundle, never a
    model.json whose hashes do not match its files. Returns the bundle as now written (manifest only).
    """
    from edgevae.runtime.outputs import write_files

    current = bundle if isinstance(bundle, Bundle) else read_manifest(resolve_path(bundle))
    manifest = json.loads(json.dumps(current.manifest))  # a deep copy
    for path, entry in changes.items():
        *parents, key = path.split(".")
        section = manifest
        for name in parents:
            section = section.setdefault(name, {})
        if entry is None:
            section.pop(key, None)
        else:
            section[key] = entry
    where = current.path / contract.MANIFEST_FILE
    data = schema.to_json(manifest, where)
    recorded = schema.file_entries(manifest)
    for name, content in (files or {}).items():
        check_file_name(name, current.path)
        if recorded.get(name) != sha256_bytes(content):
            raise BundleError(f"{current.path / name}: the new model.json does not record this file with its sha256")
    write_files([(current.path / name, content) for name, content in (files or {}).items()] + [(where, data)],
                force=True)
    return Bundle(current.path, manifest)


def refuse_external_data(graph: bytes, where: Path) -> None:
    """BundleError if an ONNX graph keeps a tensor in an external data file: its bytes would not be
    checked (onnxruntime reads it relative to the working directory when loading from bytes)."""
    external = external_data_tensor(graph, where)
    if external is not None:
        raise BundleError(f"{where}: keeps tensor {external!r} in an external data file, "
                          "which bundles may not do (its bytes would not be checked); export it as one file")


def digest_mismatch(path: Path) -> BundleError:
    """The error for a bundle file whose sha256 is not the one model.json records."""
    return BundleError(f"{path}: sha256 does not match model.json (file altered or from another bundle)")


# -- ONNX external data ----------------------------------------------------------------------------
# The runtime never imports onnx, so the few protobuf fields that can hold a tensor are walked
# here: ModelProto.graph (7) and .functions (25); GraphProto.node (1), .initializer (5),
# .sparse_initializer (15); NodeProto.attribute (5); FunctionProto.node (7), .attribute_proto (11);
# AttributeProto.t (5), .g (6), .tensors (10), .graphs (11), .sparse_tensor (22), .sparse_tensors (23);
# SparseTensorProto.values (1), .indices (2); TensorProto.name (8), .external_data (13),
# .data_location (14, EXTERNAL = 1). Field numbers from onnx/onnx.proto, which only ever adds fields.

_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "function": {7: "node", 11: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("bad varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _skip(data: bytes, pos: int, end: int, wire: int) -> int:
    """Position after a field value of wire type ``wire`` (groups, 3, are skipped whole)."""
    if wire == 0:
        return _varint(data, pos, end)[1]
    if wire == 1:
        return pos + 8
    if wire == 5:
        return pos + 4
    if wire == 2:
        length, pos = _varint(data, pos, end)
        return pos + length
    if wire == 3:
        depth = 1
        while depth:
            key, pos = _varint(data, pos, end)
            if key & 7 == 3:
                depth += 1
            elif key & 7 == 4:
                depth -= 1
            else:
                pos = _skip(data, pos, end, key & 7)
        return pos
    raise ValueError(f"wire type {wire}")


def external_data_tensor(data: bytes, where: Path) -> str | None:
    """The name of a tensor of ONNX model ``data`` stored in an external file (``"?"`` if it has no
    name), or None if every tensor is inside the model. BundleError if ``data`` is not protobuf."""
    stack = [("model", 0, len(data))]
    try:
        while stack:
            kind, pos, end = stack.pop()
            children = _CHILDREN[kind]
            name = "?"
            while pos < end:
                key, pos = _varint(data, pos, end)
                number, wire = key >> 3, key & 7
                if wire == 0:
                    value, pos = _varint(data, pos, end)
                    if kind == "tensor" and number == 14 and value == 1:
                        return name
                elif wire == 2:
                    length, pos = _varint(data, pos, end)
                    if pos + length > end:
                        raise ValueError("field runs past its message")
                    if kind == "tensor" and number == 8:
                        name = data[pos : pos + length].decode("utf-8", "replace")
                    elif kind == "tensor" and number == 13:
                        return name
                    elif number in children:
                        stack.append((children[number], pos, pos + length))
                    pos += length
                else:
                    pos = _skip(data, pos, end, wire)
            if pos != end:
                raise ValueError("field runs past its message")
    except ValueError as e:
        raise BundleError(f"{where}: ONNX Runtime cannot load this graph (not an ONNX protobuf: {e})") from None
    return None
