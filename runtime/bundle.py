"""Finding, reading and verifying model bundles (``model.json`` + the ONNX files it names).

A bundle is resolved in one place: an explicit path (or the name of a bundle shipped in
:mod:`edgevae.exported`, such as ``fashion-mnist-int8``), else ``$EDGEVAE_MODEL``, else the
default shipped bundle. Before any ONNX session exists, every
file named by the manifest is checked against its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevae.runtime import contract
from edgevae.runtime.errors import BundleError

#: Environment variable naming a bundle folder to use instead of the shipped default.
MODEL_ENV = "EDGEVAE_MODEL"


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
    def name(self) -> str:
        """Human-readable bundle name."""
        return str(self.manifest.get("name", self.path.name))

    def graph_path(self, spec: contract.GraphSpec) -> Path:
        """Path of one of the bundle's ONNX files."""
        return self.path / self.manifest["graphs"][spec.key]["file"]

    @property
    def codec_path(self) -> Path | None:
        """Path of the codec's entropy-model tables (``codec.json``), or None if the bundle has none."""
        entry = self.manifest.get("codec")
        return self.path / entry["file"] if entry else None

    @property
    def fingerprint(self) -> bytes:
        """32-byte identity of the exact graphs and codec tables: sha256 over the graphs' sha256s,
        in contract order, then the codec tables' sha256 if the bundle has them."""
        digest = hashlib.sha256()
        for spec in contract.GRAPHS:
            digest.update(bytes.fromhex(self.manifest["graphs"][spec.key]["sha256"]))
        if self.manifest.get("codec"):
            digest.update(bytes.fromhex(self.manifest["codec"]["sha256"]))
        return digest.digest()


def default_bundle_path() -> Path:
    """The bundle shipped inside the package (``edgevae.exported``)."""
    from edgevae.exported import DEFAULT_BUNDLE

    return DEFAULT_BUNDLE


def default_codec_bundle_path() -> Path:
    """The shipped bundle trained for lossy compression (``edgevae compress``'s default)."""
    from edgevae.exported import DEFAULT_CODEC_BUNDLE

    return DEFAULT_CODEC_BUNDLE


def default_denoise_bundle_path() -> Path:
    """The shipped bundle trained for denoising (``edgevae denoise``'s default)."""
    from edgevae.exported import DEFAULT_DENOISE_BUNDLE

    return DEFAULT_DENOISE_BUNDLE


def shipped_bundles() -> dict[str, Path]:
    """Name -> folder of every bundle shipped inside the package."""
    from edgevae.exported import BUNDLES

    return {p.name: p for p in sorted(BUNDLES.iterdir()) if (p / contract.MANIFEST_FILE).is_file()}


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


def _check_manifest(manifest: Any, where: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != contract.MANIFEST_FORMAT:
        raise BundleError(f"{where}: not an edgevae bundle manifest")
    version = manifest.get("format_version")
    if version != contract.MANIFEST_VERSION:
        raise BundleError(
            f"{where}: bundle format version {version} is not supported by this edgevae "
            f"(supports {contract.MANIFEST_VERSION}); upgrade edgevae or re-export the bundle"
        )
    try:
        for spec in contract.GRAPHS:
            entry = manifest["graphs"][spec.key]
            if not isinstance(entry["file"], str) or len(entry["sha256"]) != 64:
                raise KeyError(spec.key)
        c, h, w = manifest["image"]["shape"]
        int(manifest["latent"]["dim"])
        if manifest["likelihood"]["kind"] != contract.LIKELIHOOD_KIND:
            raise BundleError(f"{where}: unknown likelihood {manifest['likelihood']['kind']!r}")
        int(manifest["likelihood"]["components"])
        codec = manifest.get("codec")
        if codec is not None and (not isinstance(codec["file"], str) or len(codec["sha256"]) != 64):
            raise KeyError("codec")
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: manifest is incomplete (missing or invalid {e})") from None


def read_manifest(folder: Path) -> Bundle:
    """A bundle from its checked manifest alone: its files are not hashed (see :func:`read_bundle`).

    Enough for its name, shapes and fingerprint, which come from the manifest.
    """
    if not folder.is_dir():
        names = ", ".join(shipped_bundles())
        raise BundleError(f"{folder}: no such model bundle folder (shipped bundles by name: {names})")
    manifest_path = folder / contract.MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{folder}: not a model bundle (no {contract.MANIFEST_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path}: unreadable manifest ({type(e).__name__})") from None
    _check_manifest(manifest, manifest_path)
    return Bundle(folder, manifest)


def read_bundle(path: str | os.PathLike[str] | None = None) -> Bundle:
    """Read and verify a bundle folder (or the default). Raises BundleError on any problem."""
    bundle = read_manifest(resolve_path(path))
    folder, manifest = bundle.path, bundle.manifest
    files = [(bundle.graph_path(spec), manifest["graphs"][spec.key]["sha256"]) for spec in contract.GRAPHS]
    if bundle.codec_path is not None:
        files.append((bundle.codec_path, manifest["codec"]["sha256"]))
    for file, expected in files:
        if not file.is_file():
            raise BundleError(f"{folder}: bundle is partial, {file.name} is missing")
        if sha256_file(file) != expected:
            raise digest_mismatch(file)
    return bundle


def digest_mismatch(path: Path) -> BundleError:
    """The error for a bundle file whose sha256 is not the one model.json records."""
    return BundleError(f"{path}: sha256 does not match model.json (file altered or from another bundle)")
