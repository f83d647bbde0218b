"""Which bundle and which codec do a job: per mode for compressing, per container for decoding.

Model resolution itself (argument, then ``$EDGEVAE_MODEL``, then the shipped default) lives in
runtime/bundle.py; this module adds the two choices that depend on the job, so that an app
embedding the API makes them exactly as ``edgevae compress`` / ``decompress`` / ``info`` do:

- a mode's default bundle: lossy coding uses the shipped codec bundle (trained for PSNR per
  byte), lossless and near-lossless the default model (trained for likelihood, which is what
  bits-back spends: near-lossless files of 1,000 test images are 5-10 % smaller with it than
  with fashion-mnist-codec at every K, at about half the speed; benchmarks/nearlossless.py);
- the denoising job's bundle: the shipped one whose encoder was trained on noisy images for the
  default bundle's decoder;
- a container's bundle: the one named by the caller or ``$EDGEVAE_MODEL``, else the shipped
  bundle whose fingerprint made it (containers record it), else none that can vouch for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

import numpy as np

from edgevae.runtime import container as fmt
from edgevae.runtime.bundle import MODEL_ENV, Bundle, read_manifest, shipped_bundle_for_role, shipped_bundles
from edgevae.runtime.codec import CODECS, Codec, ContainerInfo, LosslessCodec, NearLosslessCodec, describe
from edgevae.runtime.errors import BundleError, ContainerError, InputError

if TYPE_CHECKING:
    from edgevae.runtime.codec import _ContainerCodec
    from edgevae.runtime.model import EdgeVAE

ModelRef = Union[str, "os.PathLike[str]", None]
AnyCodec = Union[Codec, LosslessCodec, NearLosslessCodec]


def default_bundle_for(mode: str) -> Path:
    """The shipped bundle that codes ``mode`` ("lossy", "lossless" or "near-lossless") when none is
    named: the one whose manifest holds the role of that name."""
    if mode not in CODECS:
        raise InputError(f"unknown compression mode {mode!r}; choose one of: {', '.join(CODECS)}")
    return shipped_bundle_for_role(mode)


def _named(model: ModelRef) -> ModelRef:
    """The caller's model, else ``$EDGEVAE_MODEL``, else None."""
    return model if model is not None else (os.environ.get(MODEL_ENV) or None)


def load_denoiser(model: ModelRef = None, threads: int | None = None) -> EdgeVAE:
    """The model ``edgevae denoise`` uses: ``model`` (a bundle folder or shipped name), else
    ``$EDGEVAE_MODEL``, else the shipped denoising bundle (its encoder was trained on noisy images
    for the default bundle's decoder; any bundle denoises, that one best)."""
    from edgevae.runtime.bundle import default_denoise_bundle_path
    from edgevae.runtime.model import load

    chosen = _named(model)
    return load(chosen if chosen is not None else default_denoise_bundle_path(), threads=threads)


def compress_mode(quality: str | int | None = None, lossless: bool = False, max_error: int | None = None) -> str:
    """The mode compress's choices ask for: "lossless", "near-lossless" (``max_error`` K) or "lossy"
    (at ``quality``); InputError for choices that do not go together."""
    if lossless and quality is not None:
        raise InputError("--quality does not apply to --lossless (lossless keeps every pixel)")
    if max_error is not None and (lossless or quality is not None):
        raise InputError(f"--max-error does not combine with {'--lossless' if lossless else '--quality'}: "
                         "choose one of --quality, --max-error K, --lossless")
    return "lossless" if lossless else "near-lossless" if max_error is not None else "lossy"


def open_codec(mode: str = "lossy", model: ModelRef = None, threads: int | None = None,
               max_error: int | None = None) -> AnyCodec:
    """The codec that compresses in ``mode``: the named bundle (or ``$EDGEVAE_MODEL``), else the mode's default.

    ``max_error`` (K, 1..32 levels) is required by "near-lossless" and refused by the other
    modes (InputError). ``threads`` defaults to the codec's own choice (lossless and
    near-lossless run their own parallel lanes, one onnxruntime thread each).
    """
    from edgevae.runtime.model import load
    from edgevae.runtime.nearlossless import check_max_error

    default = default_bundle_for(mode)
    codec_class = CODECS[mode]
    if codec_class is NearLosslessCodec:
        k = check_max_error(max_error)  # before loading anything
    elif max_error is not None:
        raise InputError(f"max_error applies to near-lossless coding only, not to {mode}")
    chosen = _named(model)
    loaded = load(chosen if chosen is not None else default,
                  threads=threads if threads is not None else codec_class.default_threads)
    if codec_class is NearLosslessCodec:
        return NearLosslessCodec(loaded, k)
    return codec_class(loaded)  # type: ignore[call-arg, return-value]


def shipped_bundle_for(data: bytes) -> Bundle | None:
    """The shipped bundle whose fingerprint made container ``data`` (prefix and checksum match), or None.

    Only manifests are read (the fingerprint comes from them); load the result to verify its files.
    None also for a container too damaged to parse: decoding it then reports what is wrong.
    """
    try:
        parsed = fmt.parse(data)
    except ContainerError:
        return None
    for folder in shipped_bundles().values():
        try:
            bundle = read_manifest(folder)
        except BundleError:
            continue
        if parsed.header.fingerprint_prefix != fmt.fingerprint_prefix(bundle.fingerprint):
            continue
        try:
            parsed.verify(bundle.fingerprint, bundle.image_shape)
        except ContainerError:
            continue
        return bundle
    return None


def unvouched(data: bytes) -> ContainerError:
    """The error for a container that no named or shipped bundle can vouch for: damaged, or made
    by a bundle that is not shipped. Names both, and the fix."""
    try:
        header = fmt.parse(data).header
    except ContainerError as e:
        return e
    return ContainerError(
        f"container was made by another model that is not shipped (fingerprint {header.fingerprint_prefix:x}..), "
        "or it is damaged; if you made it with your own bundle, pass that bundle with --model"
    )


def bundle_for_container(data: bytes, model: ModelRef = None) -> ModelRef:
    """The bundle to decode container ``data`` with: ``model`` or ``$EDGEVAE_MODEL`` if set, else
    the shipped bundle that made it. ContainerError if none is named and no shipped bundle made it."""
    chosen = _named(model)
    if chosen is not None:
        return chosen
    shipped = shipped_bundle_for(data)
    if shipped is None:
        raise unvouched(data)
    return shipped.path


def codec_for_container(data: bytes, model: ModelRef = None, threads: int | None = None,
                        cache: dict[str, _ContainerCodec] | None = None) -> AnyCodec:
    """The codec that decodes container ``data`` (see :func:`bundle_for_container`).

    ``threads`` defaults to the container mode's own choice; ``cache`` (a dict the caller keeps)
    shares one codec per bundle across the containers of one job.
    """
    from edgevae.runtime.model import load

    path = bundle_for_container(data, model)
    try:
        mode = fmt.read_header(data)[0].mode_name
    except ContainerError:
        mode = Codec.mode  # decoding reports the damage
    # Any codec decodes any mode; a lossless one needs no codec tables and runs bits-back lanes.
    codec_class = LosslessCodec if mode in (LosslessCodec.mode, NearLosslessCodec.mode) else Codec
    key = f"{path}\0{codec_class.mode}"
    if cache is not None and key in cache:
        return cache[key]  # type: ignore[return-value]
    codec = codec_class(load(path, threads=threads if threads is not None else codec_class.default_threads))
    if cache is not None:
        cache[key] = codec
    return codec  # type: ignore[return-value]


def inspect_container(data: bytes, model: ModelRef = None) -> tuple[ContainerInfo, Bundle | None]:
    """Describe container ``data`` without decoding it, checked against the bundle that should have
    made it (see :func:`bundle_for_container`); that bundle, or None when no named or shipped
    bundle can vouch for the container (``info.vouched`` is then False).

    ContainerError if the bytes are not a structurally valid container, or if the bundle's
    fingerprint prefix matches but the checksum fails; BundleError if a named bundle is broken.
    """
    from edgevae.runtime.bundle import read_bundle
    from edgevae.runtime.tables import load_tables

    chosen = _named(model)
    if chosen is None:
        shipped = shipped_bundle_for(data)
        chosen = shipped.path if shipped is not None else None
    if chosen is None:
        return describe(data), None
    bundle = read_bundle(chosen)
    return describe(data, bundle, load_tables(bundle) if bundle.codec_path is not None else None), bundle


def check_vouched(data: bytes, info: ContainerInfo, bundle: Bundle | None) -> None:
    """ContainerError unless ``bundle`` (from :func:`inspect_container`) vouches for container
    ``data``: no bundle made it, or ``bundle`` is another model's or the container is damaged."""
    if info.vouched:
        return
    if bundle is None:
        raise unvouched(data)
    raise ContainerError(f"container was made by another model than {bundle.name} (fingerprint "
                         f"{info.fingerprint_prefix}..) or is damaged; pass the bundle that made it with --model")


class Containers:
    """Containers to decode in one job, each by the bundle that made it (see
    :func:`codec_for_container`; one codec per bundle): ``edgevae decompress``'s job.

    Every container's bundle is found, and every header read, when the job is made: a container
    no bundle can decode fails before anything is decoded.
    """

    def __init__(self, blobs: list[bytes], model: ModelRef = None, threads: int | None = None) -> None:
        cache: dict[str, _ContainerCodec] = {}
        self.blobs = blobs
        self.codecs = [codec_for_container(blob, model, threads, cache) for blob in blobs]
        #: Images each container holds.
        self.counts = [fmt.read_header(blob)[0].count for blob in blobs]

    @property
    def stored(self) -> int:
        """Images the containers hold together."""
        return sum(self.counts)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the first container's model, the one bits per pixel are counted in."""
        return self.codecs[0].model.image_shape

    def decompress(self, stems: list[str], indices: list[int] | None = None,
                   progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[str]]:
        """All images, uint8 (N, C, H, W), or those at ``indices`` (one container only), and a name
        per image: the container's stem, with ``-NNNN`` (the image's index) if it holds several."""
        parts, names = [], []
        for stem, blob, stored, codec in zip(stems, self.blobs, self.counts, self.codecs):
            images = codec.decompress(blob, indices=indices, progress=progress)
            names += [stem] if stored == 1 else [f"{stem}-{i:04d}" for i in (indices or range(len(images)))]
            parts.append(images)
        return np.concatenate(parts), names
