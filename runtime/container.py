"""The ``.evz`` container: every constant of the compressed format, and its reader and writer.

docs/FORMAT.md specifies the format field by field; this module is its single source of
numbers. Layout (version 1; version 2 is the same with mode 2, near-lossless; version 3 holds
modes 1 and 2 of integer bundles, whose payloads use the exact table set), bit by bit::

    offset  size  field
    0       1     MAGIC 0xEE
    1       1     format version (bits 7-4) | mode (bits 3-2) | multi (bit 1) | reserved 0 (bit 0)
    2       1     quality index (bits 7-4) | fingerprint prefix (bits 3-0): the high 4 bits of
                  byte 0 of the model bundle's 32-byte fingerprint
    3       1-5   [multi only] image count N >= 2, LEB128 varint
    ...     1     [near-lossless only] maximum error K, 1..MAX_ERROR
    ...     1-5   [multi only] byte length of payloads 0 .. N-2, one varint each
    ...     ...   payloads, concatenated (the last one runs to the CRC)
    end-4   4     CRC-32 (zlib), big-endian, of: every byte before it
                  + the full 32-byte model fingerprint + the image geometry C, H, W (u32 BE each)

A single image costs ``HEADER_BYTES + CRC_BYTES`` = 7 bytes on top of its payload: at about
20 bytes per file every header byte is 5 % of the file, hence the nibbles. The fingerprint and
the geometry are not stored, only checked: they enter the CRC, so a file decoded with another
model (or another image size) fails the checksum even when the 4-bit prefix happens to match
(1 time in 16; the prefix only makes the error message say "another model" the other 15).

Parsing never allocates in proportion to a claimed count: every count and length is checked
against the bytes actually present before anything is built from it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from edgevae.runtime.errors import ContainerError

# -- header ----------------------------------------------------------------------------------

#: First byte of every container. Not ASCII, so text files and 7-bit mangling never pass.
MAGIC = 0xEE
#: Container format version of lossy and lossless containers (1..15).
VERSION = 1
#: Version of near-lossless containers (mode 2). A container carries the lowest version that can
#: express it, so lossy and lossless files stay readable by every release; a release that knows
#: only version 1 says "newer than this edgevae supports; upgrade" on a near-lossless file.
NEAR_LOSSLESS_VERSION = 2
#: Version of lossless (mode 1) and near-lossless (mode 2) containers made by an *integer* bundle
#: (model.json "arithmetic": "integer"): their payloads use the exact table set (docs/FORMAT.md
#: §7.3), which a version-1/2 reader does not know, so it says "newer ...; upgrade". Framing and
#: payload layout are those of versions 1 (mode 1) and 2 (mode 2); the version alone names the
#: table set: versions 1 and 2 the float set (float bundles), version 3 the exact set.
EXACT_VERSION = 3
#: The newest version this edgevae reads.
NEWEST_VERSION = EXACT_VERSION
#: The modes each version may hold (one canonical form per container).
VERSION_MODES = {VERSION: (0, 1), NEAR_LOSSLESS_VERSION: (2,), EXACT_VERSION: (1, 2)}
#: Conventional file suffix.
SUFFIX = ".evz"

#: Fixed header size in bytes: magic, version/mode/multi byte, quality/fingerprint byte.
HEADER_BYTES = 3
#: Size of the trailing CRC-32.
CRC_BYTES = 4
#: Size of the full bundle fingerprint that enters the CRC.
FINGERPRINT_BYTES = 32
#: Smallest possible container: a single image with an empty payload.
MIN_BYTES = HEADER_BYTES + CRC_BYTES

# Byte 1: version nibble, two bits of mode, the "multi" bit, one reserved bit (must be 0).
VERSION_SHIFT = 4
MODE_SHIFT = 2
MODE_MASK = 0x03
MULTI_BIT = 0x02
RESERVED_BIT = 0x01
# Byte 2: quality nibble, fingerprint-prefix nibble.
QUALITY_SHIFT = 4
FINGERPRINT_PREFIX_MASK = 0x0F
#: Highest quality index the header can hold (a bundle has at most 16 levels).
MAX_QUALITY_INDEX = 15

#: Mode 0: latent means quantized per quality level and entropy coded (lossy).
MODE_LOSSY = 0
#: Mode 1: bits-back lossless coding (runtime/bitsback.py): ONE payload holds all N images
#: (no payload lengths), and N is bounded by MAX_LOSSLESS_IMAGES_PER_BYTE times the payload size.
MODE_LOSSLESS = 1
#: A lossless container may not claim more images than this per payload byte (a real image costs
#: hundreds of bits): bounds the count before anything is allocated for it.
MAX_LOSSLESS_IMAGES_PER_BYTE = 8
#: The same bound for a near-lossless container: at most one image per payload byte. The
#: cheapest real images (all black at K = 32) cost about 9.5 bytes each, their latent's share;
#: the bound is also what limits a forged container's work, since the lossless decoder's check
#: for chains that run dry does not apply here (such cheap images legitimately run a chain dry
#: for many steps; runtime/bitsback.py).
MAX_NEAR_LOSSLESS_IMAGES_PER_BYTE = 1
#: Mode 2: near-lossless (runtime/nearlossless.py): every pixel within K levels of the input. A
#: byte K follows the count; quality nibble 0: ONE bits-back payload for all N images (as mode
#: 1); nibble q >= 1 (single images only): the latent quantized at lossy level q - 1 of the
#: bundle's codec tables, then the bins under it.
MODE_NEAR_LOSSLESS = 2
#: Largest maximum error K of a near-lossless container (smallest is 1).
MAX_ERROR = 32
MODE_NAMES = {MODE_LOSSY: "lossy", MODE_LOSSLESS: "lossless", MODE_NEAR_LOSSLESS: "near-lossless"}

#: Longest accepted varint: 5 bytes of 7 bits hold any count or length below 2**35.
MAX_VARINT_BYTES = 5
#: Largest image count a container may claim (also bounded by the bytes actually present).
MAX_COUNT = 2**32 - 1


def fingerprint_prefix(fingerprint: bytes) -> int:
    """The 4 bits of a bundle fingerprint stored in the header (high nibble of its byte 0)."""
    return fingerprint[0] >> 4


# -- payload (the entropy-coded latents of one image) -----------------------------------------

#: Steps are stored as integers in units of 2**-STEP_BITS, so the decoder's latents
#: (symbol * step) are exact dyadic numbers, identical on every machine.
STEP_BITS = 16
#: Smallest allowed step in those units (2**-12): keeps every escape value below 2**ESCAPE_BITS.
MIN_STEP_UNITS = 16
#: Latent means are clipped to [-LATENT_CLAMP, LATENT_CLAMP] (prior standard deviations).
LATENT_CLAMP = 16
#: Frequency tables hold integers summing to 2**FREQUENCY_BITS, each at least 1.
FREQUENCY_BITS = 16
#: Most entries one table may hold (including the escape entry).
MAX_ALPHABET = 4096
#: Escaped symbols are coded uniformly over 2**ESCAPE_BITS values (integer-exact in constriction).
ESCAPE_BITS = 20
#: constriction's RangeEncoder/RangeDecoder (default preset): 32-bit words, read big-endian from the
#: payload (zero-padded).
WORD_BYTES = 4

#: Identifies a bundle's codec.json and its version.
TABLES_FORMAT = "edgevae-codec-tables"
TABLES_VERSION = 1
TABLES_FILE = "codec.json"


@dataclass(frozen=True)
class Header:
    """The fixed header fields of a container."""

    version: int
    mode: int
    quality: int
    fingerprint_prefix: int  # 0..15
    count: int
    max_error: int = 0  # near-lossless: K (1..MAX_ERROR); 0 otherwise

    @property
    def mode_name(self) -> str:
        """``lossy``, ``lossless``, ``near-lossless`` or ``reserved-N``."""
        return MODE_NAMES.get(self.mode, f"reserved-{self.mode}")


@dataclass(frozen=True)
class Container:
    """A structurally valid container: header, and where each image's payload lies.

    The checksum is not verified here (it needs the model's fingerprint): call :meth:`verify`.
    """

    data: bytes
    header: Header
    offsets: tuple[int, ...]  # count + 1 positions: payload i is data[offsets[i]:offsets[i + 1]]
    # (lossless and near-lossless: 2 positions, payload 0 holds every image)

    @property
    def overhead_bytes(self) -> int:
        """Bytes that are not payload: header, count, lengths and CRC."""
        return len(self.data) - (self.offsets[-1] - self.offsets[0])

    def payload(self, index: int) -> bytes:
        """The entropy-coded bytes of image ``index``."""
        return self.data[self.offsets[index] : self.offsets[index + 1]]

    def verify(self, fingerprint: bytes, geometry: tuple[int, int, int]) -> None:
        """Check the CRC against this model; ContainerError if the bytes or the model differ."""
        stored = struct.unpack(">I", self.data[-CRC_BYTES:])[0]
        if stored != checksum(self.data[:-CRC_BYTES], fingerprint, geometry):
            raise ContainerError(
                "checksum mismatch: the file is damaged or truncated, or was made by another model "
                "with the same fingerprint prefix"
            )


def checksum(body: bytes, fingerprint: bytes, geometry: tuple[int, int, int]) -> int:
    """CRC-32 of ``body`` + the full fingerprint + C, H, W as big-endian u32."""
    if len(fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    crc = zlib.crc32(body)
    return zlib.crc32(fingerprint + struct.pack(">III", *geometry), crc)


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant first, high bit = more follows."""
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def decode_varint(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """Read one canonical varint at ``pos`` (before ``end``); returns (value, next position)."""
    value = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= end:
            raise ContainerError(f"container is truncated (inside the {what})")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise ContainerError(f"container is damaged (over-long {what})")
            return value, pos + i + 1
    raise ContainerError(f"container is damaged ({what} longer than {MAX_VARINT_BYTES} bytes)")


def pack(mode: int, quality: int, fingerprint: bytes, geometry: tuple[int, int, int], payloads: list[bytes]) -> bytes:
    """Build a container from per-image payloads; the inverse of :func:`parse`."""
    if not payloads:
        raise ValueError("a container holds at least one image")
    if not 0 <= quality <= MAX_QUALITY_INDEX or mode not in MODE_NAMES:
        raise ValueError(f"mode {mode} / quality {quality} do not fit the header")
    multi = len(payloads) > 1
    parts = [bytes([MAGIC, VERSION << VERSION_SHIFT | mode << MODE_SHIFT | (MULTI_BIT if multi else 0),
                    quality << QUALITY_SHIFT | fingerprint_prefix(fingerprint)])]
    if multi:
        parts.append(encode_varint(len(payloads)))
        parts.extend(encode_varint(len(p)) for p in payloads[:-1])
    parts.extend(payloads)
    body = b"".join(parts)
    return body + struct.pack(">I", checksum(body, fingerprint, geometry))


def pack_lossless(fingerprint: bytes, geometry: tuple[int, int, int], count: int, payload: bytes,
                  exact: bool = False) -> bytes:
    """Build a lossless container: the header (quality 0), the count if multi, one payload, the CRC.
    ``exact``: the payload uses the exact table set (an integer bundle): version 3, else 1."""
    if count < 1 or count > min(MAX_COUNT, MAX_LOSSLESS_IMAGES_PER_BYTE * len(payload)):
        raise ValueError(f"a lossless container cannot hold {count} images in {len(payload)} payload bytes")
    multi = count > 1
    version = EXACT_VERSION if exact else VERSION
    parts = [bytes([MAGIC, version << VERSION_SHIFT | MODE_LOSSLESS << MODE_SHIFT | (MULTI_BIT if multi else 0),
                    fingerprint_prefix(fingerprint)])]
    if multi:
        parts.append(encode_varint(count))
    parts.append(payload)
    body = b"".join(parts)
    return body + struct.pack(">I", checksum(body, fingerprint, geometry))


def pack_near_lossless(fingerprint: bytes, geometry: tuple[int, int, int], count: int, max_error: int,
                       level: int, payload: bytes, exact: bool = False) -> bytes:
    """Build a near-lossless container (version 2; 3 with ``exact``, the exact table set of an
    integer bundle): header with quality nibble ``level`` (0: a bits-back payload; q >= 1: single
    image, latent at lossy level q - 1), the count if multi, K, one payload, the CRC."""
    if not 1 <= max_error <= MAX_ERROR:
        raise ValueError(f"max error {max_error} is outside 1..{MAX_ERROR}")
    if count < 1 or count > min(MAX_COUNT, MAX_NEAR_LOSSLESS_IMAGES_PER_BYTE * max(len(payload), 1)):
        raise ValueError(f"a near-lossless container cannot hold {count} images in {len(payload)} payload bytes")
    if not 0 <= level <= MAX_QUALITY_INDEX or (level and count > 1):
        raise ValueError(f"level {level} does not fit a near-lossless container of {count} images")
    multi = count > 1
    version = EXACT_VERSION if exact else NEAR_LOSSLESS_VERSION
    parts = [bytes([MAGIC, version << VERSION_SHIFT | MODE_NEAR_LOSSLESS << MODE_SHIFT
                    | (MULTI_BIT if multi else 0), level << QUALITY_SHIFT | fingerprint_prefix(fingerprint)])]
    if multi:
        parts.append(encode_varint(count))
    parts += [bytes([max_error]), payload]
    body = b"".join(parts)
    return body + struct.pack(">I", checksum(body, fingerprint, geometry))


def exact_tables(version: int) -> bool:
    """True if a lossless or near-lossless container of ``version`` uses the exact table set."""
    return version == EXACT_VERSION


def read_header(data: bytes) -> tuple[Header, int]:
    """Parse and check magic, version and the fixed fields; returns the header and the position after it.

    Raises ContainerError for anything that is not a well-formed header of this version.
    """
    if len(data) < 2 or data[0] != MAGIC:
        raise ContainerError("not an edgevae container (.evz): wrong magic byte")
    version = data[1] >> VERSION_SHIFT
    if version not in VERSION_MODES:
        if version > NEWEST_VERSION:
            raise ContainerError(f"container format version {version} is newer than this edgevae "
                                 f"supports ({NEWEST_VERSION}); upgrade edgevae")
        raise ContainerError(f"not an edgevae container (unknown format version {version})")
    if len(data) < MIN_BYTES:
        raise ContainerError(f"container is truncated ({len(data)} bytes, at least {MIN_BYTES} needed)")
    flags = data[1]
    mode = flags >> MODE_SHIFT & MODE_MASK
    if mode not in VERSION_MODES[version]:
        raise ContainerError(f"container is damaged (reserved mode {mode} for format version {version})")
    if flags & RESERVED_BIT:
        raise ContainerError("container is damaged (reserved header bit set)")
    end = len(data) - CRC_BYTES
    pos = HEADER_BYTES
    count = 1
    if flags & MULTI_BIT:
        count, pos = decode_varint(data, pos, end, "image count")
        if count < 2:
            raise ContainerError("container is damaged (multi-image container with fewer than 2 images)")
        # Each of the count - 1 lengths takes at least one byte (lossless: each image at least one
        # bit): bound the count by the file size before anything proportional to it exists.
        room = (end - pos + 1 if mode == MODE_LOSSY else MAX_LOSSLESS_IMAGES_PER_BYTE * (end - pos)
                if mode == MODE_LOSSLESS else MAX_NEAR_LOSSLESS_IMAGES_PER_BYTE * (end - pos))
        if count > MAX_COUNT or count > room:
            raise ContainerError(f"container is damaged or truncated (claims {count} images in {len(data)} bytes)")
    max_error = 0
    if mode == MODE_NEAR_LOSSLESS:
        if pos >= end:
            raise ContainerError("container is truncated (before its maximum error)")
        max_error = data[pos]
        pos += 1
        if not 1 <= max_error <= MAX_ERROR:
            raise ContainerError(f"container is damaged (maximum error {max_error} not in 1..{MAX_ERROR})")
        if count > 1 and data[2] >> QUALITY_SHIFT:
            raise ContainerError("container is damaged (a latent level in a multi-image near-lossless container)")
    header = Header(version=version, mode=mode, quality=data[2] >> QUALITY_SHIFT,
                    fingerprint_prefix=data[2] & FINGERPRINT_PREFIX_MASK, count=count, max_error=max_error)
    return header, pos


def parse(data: bytes) -> Container:
    """Parse a container's structure (header, count, lengths) without checking its CRC."""
    data = bytes(data)
    header, pos = read_header(data)
    end = len(data) - CRC_BYTES
    if header.mode != MODE_LOSSY:  # one payload for every image
        return Container(data=data, header=header, offsets=(pos, end))
    lengths = []
    for _ in range(header.count - 1):
        length, pos = decode_varint(data, pos, end, "payload length")
        lengths.append(length)
    offsets = [pos]
    for length in lengths:
        offsets.append(offsets[-1] + length)
        if offsets[-1] > end:
            raise ContainerError("container is damaged or truncated (payload lengths exceed the file)")
    offsets.append(end)
    return Container(data=data, header=header, offsets=tuple(offsets))
