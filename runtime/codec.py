"""The codecs: lossy and lossless compression of images to ``.evz`` containers, and back.

    Codec (lossy):
        uint8 images --encoder.onnx--> posterior means (float32, N x D)
        --QualityTable.symbols: quantize, zigzag, escape (runtime/tables.py)--> table indices
        (refine=True: symbols chosen with decoder.onnx in the loop instead, runtime/refine.py)
        --rangecode.encode_payloads: one range-coder message per image--> payloads
        --container.pack (header, lengths, CRC-32)--> bytes
    LosslessCodec:
        uint8 images --bits-back coding with both graphs (runtime/bitsback.py)--> one payload
        --container.pack_lossless--> bytes
    NearLosslessCodec (every pixel within K levels; also the lossy codec's high-quality levels):
        uint8 images --bins of <= 2K + 1 levels, coded by runtime/nearlossless.py--> one payload
        --container.pack_near_lossless--> bytes
    decompress (either codec; the container's mode decides):
        bytes --parse + CRC against this model--> payloads
        --lossy: range decode (integers only) --> latents symbol * step --> decoder.onnx
        --lossless: bits-back decoding --> the exact pixels
        --near-lossless: bins + the likelihood at the decoded latent --> pixels within K

This module only orchestrates: the tables, their fitting and the range coder live in
runtime/tables.py and runtime/rangecode.py, the container's bytes in runtime/container.py, and
which bundle codes a mode or made a container in runtime/selection.py.

Determinism: lossy bytes are a pure function of the encoder's float32 means. onnxruntime's CPU
encoder gives bit-identical means for any batch size and thread count on one machine (tested),
so compress output is identical across runs, batch sizes and thread counts. Across different
CPUs or onnxruntime builds a mean can differ in its last bits; one lying within that distance
of a bin edge (chance ~1e-6 per value) then picks the neighbouring symbol: a different but
equally valid file. Decoding needs no float math before the decoder network. Refined compression
(``refine=True``) also depends on decoder.onnx's pixels, which are the same for every batch size
and thread count on one machine (tested), so it keeps that promise; on another machine a pixel
that differs can change a move, again giving a different but equally valid file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np

from edgevae.runtime import container as fmt
from edgevae.runtime.bundle import Bundle
from edgevae.runtime.errors import ContainerError, InputError
from edgevae.runtime.model import integer
from edgevae.runtime.rangecode import decode_payloads, encode_payloads, encode_symbols
from edgevae.runtime.refine import Search
from edgevae.runtime.refine import refine as refine_symbols
from edgevae.runtime.quality import HighQualityLevel
from edgevae.runtime.tables import CodecTables, QualityTable, high_quality_levels, load_tables
from edgevae.runtime.units import bits_per_pixel

if TYPE_CHECKING:
    from edgevae.runtime.model import EdgeVAE

#: Images per encoder/decoder call inside the codec. It never changes the bytes; it sets memory:
#: measured on 10,000 images, 128 runs as fast as 1024 with a peak RSS of 195 MB instead of
#: 925 MB (onnxruntime's buffers grow with the batch), and 1.5x faster than 32.
DEFAULT_BATCH_SIZE = 128

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ContainerInfo:
    """What a container says about itself, and whether it fits a given model."""

    bytes: int
    version: int
    mode: str
    quality_index: int
    quality: str | None  # the level's name, if the model's tables are known
    count: int
    max_error: int | None  # near-lossless: every pixel within this many levels; None otherwise
    payload_bytes: int
    overhead_bytes: int
    fingerprint_prefix: str  # one hex digit: the high 4 bits of the model fingerprint
    model_matches: bool | None  # None: no model to compare with
    checksum_ok: bool | None  # None: not checked (no model, or another model)
    image_shape: tuple[int, int, int] | None
    bits_per_pixel: float | None

    @property
    def vouched(self) -> bool:
        """True when a model was given, its fingerprint matches and the checksum holds."""
        return bool(self.model_matches and self.checksum_ok)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "vouched": self.vouched}


def describe(data: bytes, bundle: Bundle | None = None, tables: CodecTables | None = None) -> ContainerInfo:
    """Describe a container without decoding it; with a bundle, check it belongs to that model.

    ContainerError if ``data`` is not a structurally valid container, or if it belongs to
    ``bundle`` (same fingerprint prefix) but its checksum fails.
    """
    parsed = fmt.parse(data)
    header = parsed.header
    matches = checksum_ok = None
    name = shape = bpp = None
    if bundle is not None:
        fingerprint = bundle.fingerprint
        matches = header.fingerprint_prefix == fmt.fingerprint_prefix(fingerprint)
        if matches:
            parsed.verify(fingerprint, bundle.image_shape)
            checksum_ok = True
            shape = bundle.image_shape
            bpp = bits_per_pixel(len(parsed.data), header.count, shape)
            if tables is not None and header.mode == fmt.MODE_LOSSY and header.quality < len(tables.qualities):
                name = tables.qualities[header.quality].name
            if tables is not None and header.mode == fmt.MODE_NEAR_LOSSLESS and 0 < header.quality <= len(tables.qualities):
                name = tables.qualities[header.quality - 1].name  # the level of the single image's latent
    return ContainerInfo(
        bytes=len(parsed.data), version=header.version, mode=header.mode_name, quality_index=header.quality,
        quality=name, count=header.count, max_error=header.max_error or None, payload_bytes=len(parsed.data) - parsed.overhead_bytes,
        overhead_bytes=parsed.overhead_bytes, fingerprint_prefix=f"{header.fingerprint_prefix:x}",
        model_matches=matches, checksum_ok=checksum_ok, image_shape=shape, bits_per_pixel=bpp,
    )


class _ContainerCodec:
    """What both codecs share: a model, its fingerprint, and decoding any container it made."""

    #: Container mode this codec writes ("lossy" or "lossless").
    mode: ClassVar[str]
    #: onnxruntime threads to load the model with when the caller does not say (None: one per core).
    default_threads: ClassVar[int | None] = None

    def __init__(self, model: EdgeVAE, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch size must be an integer >= 1, got {batch_size!r}")
        self.model = model
        self.batch_size = int(batch_size)
        self.fingerprint = model.bundle.fingerprint

    @cached_property
    def tables(self) -> CodecTables:
        """The bundle's codec tables (BundleError if it has none): lossy coding and decoding need them."""
        return load_tables(self.model.bundle)

    def _batch(self, images: np.ndarray) -> np.ndarray:
        """Checked uint8 (N, C, H, W) images, N >= 1."""
        batch = self.model.check_images(images)
        if len(batch) == 0:
            raise InputError("no images to compress")
        return batch

    def _open(self, data: bytes) -> tuple[fmt.Container, QualityTable | None]:
        """Parse and verify a container of this model; the quality table (None unless lossy)."""
        parsed = fmt.parse(data)
        header = parsed.header
        prefix = fmt.fingerprint_prefix(self.fingerprint)
        if header.fingerprint_prefix != prefix:
            raise ContainerError(
                f"container was made by another model (fingerprint {header.fingerprint_prefix:x}.., "
                f"this model is {prefix:x}..) or its header is damaged; pass the bundle that made it with --model"
            )
        parsed.verify(self.fingerprint, self.model.image_shape)
        if header.mode in (fmt.MODE_LOSSLESS, fmt.MODE_NEAR_LOSSLESS) and fmt.exact_tables(header.version) != self.model.integer:
            # the version names the table set; the bundle that made the file (its fingerprint matched) decides it
            made_by = "an integer" if fmt.exact_tables(header.version) else "a float"
            raise ContainerError(f"container is damaged (version {header.version} {header.mode_name} payloads are made by "
                                 f"{made_by} bundle, {self.model.bundle.name} is not one)")
        if header.mode == fmt.MODE_LOSSLESS:
            if header.quality:
                raise ContainerError(f"container is damaged (quality index {header.quality} in a lossless container)")
            return parsed, None
        if header.mode == fmt.MODE_NEAR_LOSSLESS:
            return parsed, None
        if header.quality >= len(self.tables.qualities):
            raise ContainerError(f"container is damaged (quality index {header.quality} unknown to this model)")
        return parsed, self.tables.qualities[header.quality]

    def decompress(self, data: bytes, indices: Sequence[int] | None = None,
                   progress: Progress | None = None) -> np.ndarray:
        """Decode a container to uint8 images (N, C, H, W); ``indices`` selects images (any order).

        Either codec decodes either mode: the container says which. Only the selected images'
        payloads are decoded (a lossless container is decoded whole, its images being chained,
        and returns the exact pixels). ContainerError if the bytes are not a container of this
        model and format version, or are damaged; InputError for bad indices.
        """
        parsed, table = self._open(data)
        count = parsed.header.count
        if indices is None:
            chosen = list(range(count))
        else:
            chosen = [integer(i, "image index", None) for i in indices]  # 1.7 is refused, not read as 1
            bad = [i for i in chosen if not 0 <= i < count]
            if bad:
                raise InputError(f"image index {bad[0]} is out of range: the container holds {count} image(s)")
        if parsed.header.mode == fmt.MODE_NEAR_LOSSLESS:  # chained like lossless: all decoded, then selected
            from edgevae.runtime import nearlossless

            has_tables = parsed.header.quality and self.model.bundle.codec_path is not None
            tables = self.tables if has_tables else None
            pixels = nearlossless.decode(self.model, tables, parsed.header, parsed.payload(0),
                                         progress if indices is None else None)
            return pixels[chosen]
        if table is None:  # lossless: the images are chained, all are decoded, then selected
            from edgevae.runtime import bitsback

            pixels = bitsback.decode(self.model, parsed.payload(0), count, progress if indices is None else None)
            return pixels[chosen]
        latents = decode_payloads(table, [parsed.payload(i) for i in chosen], labels=chosen)
        parts = []
        for start in range(0, len(latents), self.batch_size):
            parts.append(self.model.decode(latents[start : start + self.batch_size]))
            if progress:
                progress(len(parts[-1]))
        if not parts:
            return np.zeros((0, *self.model.image_shape), dtype=np.uint8)
        return np.concatenate(parts)

    def describe(self, data: bytes) -> ContainerInfo:
        """Describe a container (count, quality, sizes) and check it against this model, without decoding."""
        tables = self.tables if self.model.bundle.codec_path is not None else None
        return describe(data, self.model.bundle, tables)


class Codec(_ContainerCodec):
    """Lossy compression with a loaded model and its bundle's codec tables.

        >>> codec = Codec(edgevae.runtime.load("fashion-mnist-codec"))
        >>> data = codec.compress(images, quality="balanced")   # bytes: one .evz container
        >>> codec.decompress(data)                              # uint8 (N, C, H, W)
        >>> codec.decompress(data, indices=[3])                 # image 3 alone

    ``batch_size`` bounds how many images go through the ONNX graphs at once; it changes
    speed and memory, never the bytes. Thread-safe like the model it wraps.
    """

    mode = "lossy"

    def __init__(self, model: EdgeVAE, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(model, batch_size)
        self.tables  # a bundle without codec tables cannot code lossy: say so now, not at compress

    def __repr__(self) -> str:
        return f"Codec({self.model!r}, qualities={list(self.qualities)})"

    @property
    def qualities(self) -> tuple[str, ...]:
        """Quality names, smallest files first: the lossy levels of codec.json (also named by their
        index), then the bundle's high-quality levels (near-lossless coded, :attr:`high_levels`)."""
        return tuple(q.name for q in self.tables.qualities) + tuple(q.name for q in self.high_levels)

    @property
    def lossy_qualities(self) -> tuple[str, ...]:
        """The lossy levels of codec.json alone (their index is the container's quality index)."""
        return tuple(q.name for q in self.tables.qualities)

    @cached_property
    def high_levels(self) -> tuple[HighQualityLevel, ...]:
        """The bundle's levels above its lossy ones (model.json), each a maximum error K."""
        return high_quality_levels(self.model.bundle, [q.name for q in self.tables.qualities])

    def level(self, quality: str | int | None) -> QualityTable | HighQualityLevel:
        """The level ``quality`` names (a name of :attr:`qualities`, or a lossy level's index;
        None: the default). InputError if unknown."""
        for high in self.high_levels:
            if quality == high.name:
                return high
        try:
            return self.tables.lookup(quality)
        except InputError:
            raise InputError(f"unknown quality {quality!r}; choose one of: {', '.join(self.qualities)} "
                             f"(or 0..{len(self.tables.qualities) - 1})") from None

    @property
    def default_quality(self) -> str:
        """The quality used when none is given."""
        return self.tables.default.name

    def _means(self, images: np.ndarray, progress: Progress | None) -> np.ndarray:
        batch = self._batch(images)
        parts = []
        for start in range(0, len(batch), self.batch_size):
            parts.append(self.model.encode(batch[start : start + self.batch_size])[0])
            if progress:
                progress(len(parts[-1]))
        return np.concatenate(parts)

    def _pack(self, table: QualityTable, payloads: list[bytes]) -> bytes:
        return fmt.pack(fmt.MODE_LOSSY, table.index, self.fingerprint, self.model.image_shape, payloads)

    def _payloads(self, table: QualityTable, images: np.ndarray, progress: Progress | None,
                  refine: bool | Search) -> list[bytes]:
        """One payload per image: the rounded posterior means, or (``refine``) the symbols
        runtime/refine.py picks with the decoder in the loop."""
        if refine is False:
            return encode_payloads(table, self._means(images, progress))
        search = _search(refine)
        batch = self._batch(images)
        start = table.symbols(self._means(batch, None))[1]
        chosen = refine_symbols(self.model, table, batch, start, search, self.batch_size, progress)
        return encode_symbols(table, chosen.u)

    def compress(self, images: np.ndarray, quality: str | int | None = None,
                 progress: Progress | None = None, refine: bool | Search = False) -> bytes:
        """One container holding all ``images`` (uint8 (N, C, H, W) or one (C, H, W)).

        ``quality`` is a name from :attr:`qualities` or its index (default: the bundle's
        default level). ``progress`` is called with the number of images finished after each batch.
        ``refine`` (True, or a :class:`edgevae.runtime.refine.Search`): pick each image's symbols with
        the decoder in the loop (runtime/refine.py) instead of rounding its posterior mean: fewer
        bytes and more PSNR at the same level (0.6-0.9 dB, benchmarks/results/refine.md), an ordinary
        container that every release decodes, for about 90 decoder runs per image (10-50 images/s
        per core instead of thousands). Lossy levels only (InputError for a high-quality level).
        """
        table = self.level(quality)
        if isinstance(table, HighQualityLevel):
            _no_refine(table, refine)
            return NearLosslessCodec(self.model, table.max_error, self.batch_size).compress(images, progress)
        return self._pack(table, self._payloads(table, images, progress, refine))

    def compress_each(self, images: np.ndarray, quality: str | int | None = None,
                      progress: Progress | None = None, refine: bool | Search = False) -> list[bytes]:
        """One single-image container per image (what ``edgevae compress --split`` writes); ``refine``
        as in :meth:`compress`."""
        table = self.level(quality)
        if isinstance(table, HighQualityLevel):
            _no_refine(table, refine)
            return NearLosslessCodec(self.model, table.max_error, self.batch_size).compress_each(images, progress)
        return [self._pack(table, [p]) for p in self._payloads(table, images, progress, refine)]


def _search(refine: bool | Search) -> Search:
    """``refine`` as the search to run: True -> the default Search; InputError for anything else."""
    if refine is True:
        return Search()
    if isinstance(refine, Search):
        return refine
    raise InputError(f"refine must be True, False or a refine.Search, got {refine!r}")


def _no_refine(level: HighQualityLevel, refine: bool | Search) -> None:
    if refine is not False:
        raise InputError(f"refinement applies to the lossy levels only; {level.name!r} is a near-lossless level "
                         f"(every pixel within {level.max_error})")


class LosslessCodec(_ContainerCodec):
    """Lossless compression by bits-back coding (runtime/bitsback.py): the exact pixels come back.

        >>> codec = LosslessCodec(edgevae.runtime.load(threads=1))
        >>> data = codec.compress(images)           # about 3.2 bits/pixel on Fashion-MNIST
        >>> (codec.decompress(data) == images).all()

    The coder runs two lanes in parallel threads itself, so a model loaded with ``threads=1``
    is fastest (:attr:`default_threads`). No codec tables are needed: the likelihood comes from
    the graphs.
    """

    mode = "lossless"
    default_threads = 1

    def __repr__(self) -> str:
        return f"LosslessCodec({self.model!r})"

    def compress(self, images: np.ndarray, progress: Progress | None = None) -> bytes:
        """One container holding all ``images`` (uint8 (N, C, H, W) or one (C, H, W)), chained."""
        from edgevae.runtime import bitsback

        batch = self._batch(images)
        payload = bitsback.encode(self.model, batch, progress).payload
        return fmt.pack_lossless(self.fingerprint, self.model.image_shape, len(batch), payload, self.model.integer)

    def compress_each(self, images: np.ndarray, progress: Progress | None = None) -> list[bytes]:
        """One single-image container per image (what ``edgevae compress --lossless --split`` writes)."""
        return [self.compress(image, progress) for image in self._batch(images)]


class NearLosslessCodec(_ContainerCodec):
    """Near-lossless compression: every decoded pixel within ``max_error`` (K) levels of the input.

        >>> codec = NearLosslessCodec(edgevae.runtime.load(threads=1), max_error=4)
        >>> data = codec.compress(images)                    # bits-back over bins of 9 levels
        >>> np.abs(codec.decompress(data).astype(int) - images).max() <= 4   # always True

    Several images share one bits-back payload (runtime/bitsback.py); one image
    (:meth:`compress` of one, or :meth:`compress_each`) is coded with a quantized latent from
    the bundle's codec tables when it has them (runtime/nearlossless.py). K is stored in the
    container. InputError unless K is an integer in 1..32.
    """

    mode = "near-lossless"
    default_threads = 1

    def __init__(self, model: EdgeVAE, max_error: int, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        from edgevae.runtime.nearlossless import check_max_error

        super().__init__(model, batch_size)
        self.max_error = check_max_error(max_error)

    def __repr__(self) -> str:
        return f"NearLosslessCodec({self.model!r}, max_error={self.max_error})"

    def _single_tables(self) -> CodecTables | None:
        return self.tables if self.model.bundle.codec_path is not None else None

    def compress(self, images: np.ndarray, progress: Progress | None = None) -> bytes:
        """One container holding all ``images`` (uint8 (N, C, H, W) or one (C, H, W))."""
        from edgevae.runtime import nearlossless

        batch = self._batch(images)
        if len(batch) == 1:
            return self.compress_each(batch, progress)[0]
        payload = nearlossless.encode_many(self.model, batch, self.max_error, progress)
        return fmt.pack_near_lossless(self.fingerprint, self.model.image_shape, len(batch), self.max_error, 0, payload,
                                      self.model.integer)

    def compress_each(self, images: np.ndarray, progress: Progress | None = None) -> list[bytes]:
        """One single-image container per image (what ``edgevae compress --max-error K --split`` writes)."""
        from edgevae.runtime import nearlossless

        batch = self._batch(images)
        coded = nearlossless.encode_single(self.model, self._single_tables(), batch, self.max_error, progress)
        return [fmt.pack_near_lossless(self.fingerprint, self.model.image_shape, 1, self.max_error, level, payload,
                                       self.model.integer)
                for level, payload in coded]


#: The codec of each container mode, by the name ``edgevae compress`` and the API use.
CODECS: dict[str, type[_ContainerCodec]] = {Codec.mode: Codec, LosslessCodec.mode: LosslessCodec,
                                            NearLosslessCodec.mode: NearLosslessCodec}
