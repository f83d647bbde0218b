"""Lossy image codec: quantized latent means, entropy coded with constriction, in ``.evz`` containers.

    compress:    uint8 images --encoder.onnx--> posterior means (float32, N x D)
                 --quantize: k = rint(clip(mean) / step_d)-----------------> integer symbols
                 --zigzag around the dimension's most common symbol, escape if off-table-->
                 --constriction range coder, one message per image, tables from codec.json-->
                 --cut to the shortest prefix that still decodes--> payloads
                 --container.pack (header, lengths, CRC-32)--> bytes
    decompress:  bytes --parse + CRC--> payloads --range decode (integers only)--> symbols
                 --latent = symbol * step (exact dyadic numbers)--> decoder.onnx --> uint8 images

Why a learned, stored model and not the N(0, I) prior: dimensions the VAE does not use have
posteriors equal to the prior with means near 0; coding them on a fixed grid under the prior
would cost bits for nothing. Instead every dimension gets a step proportional to its typical
posterior standard deviation (times a per-quality factor) and an integer frequency table of
its quantized training-set means (:func:`fit_tables`, run at export). Unused dimensions end up
with a table that gives their one symbol almost all the mass: they cost ~0 bits.

Why integers: the decoder must rebuild bit-identical probability tables on every machine
(learned codecs fail across machines when tables come from float math, CompressAI issue #279).
codec.json holds integers only (steps in units of 2**-16, frequencies summing to 2**16); the
coder receives ``frequency / 2**16`` as float64, which is exact, and constriction's
``Categorical(perfect=False)`` turns it into its 24-bit fixed-point CDF with exact float64
arithmetic (``floor(cumulative * (2**24 - n)) + index``: products of <= 41-bit integers), so
compress and decompress build the same table from the same integers everywhere. Decoded
latents ``symbol * step / 2**16`` are exact in float32. Only then does the decoder network run.

Determinism: the bytes are a pure function of the encoder's float32 means. onnxruntime's CPU
encoder gives bit-identical means for any batch size and thread count on one machine (tested),
so compress output is identical across runs, batch sizes and thread counts. Across different
CPUs or onnxruntime builds a mean can differ in its last bits; one lying within that distance
of a bin edge (chance ~1e-6 per value) then picks the neighbouring symbol: a different but
equally valid file. Decoding needs no float math before the decoder network.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from edgevae.runtime import container as fmt
from edgevae.runtime.container import DEFAULT_QUALITY, QUALITY_LEVELS, QualityLevel
from edgevae.runtime.bundle import Bundle, digest_mismatch, read_manifest, shipped_bundles
from edgevae.runtime.errors import BundleError, ContainerError, InputError

if TYPE_CHECKING:
    from edgevae.runtime.model import EdgeVAE

#: Images per encoder/decoder call inside the codec. It never changes the bytes; it sets memory:
#: measured on 10,000 images, 128 runs as fast as 1024 with a peak RSS of 195 MB instead of
#: 925 MB (onnxruntime's buffers grow with the batch), and 1.5x faster than 32.
DEFAULT_BATCH_SIZE = 128

#: Additive (Krichevsky-Trofimov) smoothing of the symbol counts: every table entry, including
#: symbols never seen in training and the escape, keeps a nonzero frequency.
SMOOTHING = 0.5

Progress = Callable[[int], None]


# -- integer helpers shared by fitting, compress and decompress ----------------------------------


def zigzag(values: np.ndarray) -> np.ndarray:
    """Signed -> unsigned: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ..."""
    values = np.asarray(values, dtype=np.int64)
    return np.where(values >= 0, 2 * values, -2 * values - 1)


def unzigzag(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zigzag`."""
    values = np.asarray(values, dtype=np.int64)
    return np.where(values % 2 == 0, values // 2, -(values + 1) // 2)


def max_symbol(steps: np.ndarray) -> np.ndarray:
    """Largest |symbol| per dimension: the clamp LATENT_CLAMP in units of the step, rounded."""
    steps = np.asarray(steps, dtype=np.int64)
    return (2 * (fmt.LATENT_CLAMP << fmt.STEP_BITS) + steps) // (2 * steps)


def quantize(means: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Symbols k = rint(clip(mean, +-LATENT_CLAMP) / step) as int64 (N, D).

    Float64 division by a step that is an exact dyadic number is correctly rounded (IEEE 754),
    so the symbols are a deterministic function of the float32 means.
    """
    step = np.asarray(steps, dtype=np.float64) / float(1 << fmt.STEP_BITS)
    clipped = np.clip(np.asarray(means, dtype=np.float64), -fmt.LATENT_CLAMP, fmt.LATENT_CLAMP)
    return np.clip(np.rint(clipped / step).astype(np.int64), -max_symbol(steps), max_symbol(steps))


def dequantize(symbols: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Latents symbol * step as float32: exact, since |symbol * step| < 2**24 units of 2**-16."""
    product = np.asarray(symbols, dtype=np.int64) * np.asarray(steps, dtype=np.int64)
    return (product.astype(np.float64) / float(1 << fmt.STEP_BITS)).astype(np.float32)


def _integer_table(counts: np.ndarray) -> np.ndarray:
    """Smoothed counts -> integer frequencies >= 1 summing to exactly 2**FREQUENCY_BITS."""
    total = 1 << fmt.FREQUENCY_BITS
    p = (counts + SMOOTHING) / (counts.sum() + SMOOTHING * len(counts))
    freq = np.maximum(1, np.rint(p * total)).astype(np.int64)
    # Rounding leaves a small surplus or deficit: settle it on the largest entry.
    freq[int(np.argmax(freq))] += total - int(freq.sum())
    if freq.min() < 1:
        raise ValueError("alphabet too large for the frequency precision")
    return freq


# -- fitting (run at export on the training set) ----------------------------------------------


def fit_tables(
    means: np.ndarray,
    logvars: np.ndarray,
    levels: Sequence[QualityLevel] = QUALITY_LEVELS,
    default: str = DEFAULT_QUALITY,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the codec's integer tables from posterior means and log-variances (N, D) of training images.

    Returns the JSON-ready content of ``codec.json``: per quality level, per latent dimension,
    an integer step (units of 2**-STEP_BITS), the most common symbol (the zigzag centre) and
    integer frequencies (each >= 1, summing to 2**FREQUENCY_BITS) over the zigzag indices
    0 .. A-2 plus an escape entry A-1. ``source`` (e.g. data set and image count) is recorded.
    """
    means = np.asarray(means, dtype=np.float64)
    logvars = np.asarray(logvars, dtype=np.float64)
    if means.ndim != 2 or means.shape != logvars.shape or len(means) == 0:
        raise ValueError(f"means and logvars must both be (N, D) with N >= 1, got {means.shape} and {logvars.shape}")
    if not (np.isfinite(means).all() and np.isfinite(logvars).all()):
        raise ValueError("means and logvars must be finite")
    names = [level.name for level in levels]
    if not 1 <= len(levels) <= fmt.MAX_QUALITY_INDEX + 1 or len(set(names)) != len(names) or default not in names:
        raise ValueError(f"need 1..{fmt.MAX_QUALITY_INDEX + 1} uniquely named levels including {default!r}")
    n, dim = means.shape
    sigma = np.median(np.exp(0.5 * logvars), axis=0)
    qualities = []
    for level in levels:
        steps = np.clip(np.rint(level.step_factor * sigma * (1 << fmt.STEP_BITS)), fmt.MIN_STEP_UNITS,
                        fmt.LATENT_CLAMP << fmt.STEP_BITS).astype(np.int64)
        symbols = quantize(means, steps)
        centers = np.array([_mode(symbols[:, d]) for d in range(dim)], dtype=np.int64)
        u = zigzag(symbols - centers)
        size = int(min(fmt.MAX_ALPHABET, int(u.max()) + 2))
        index = np.minimum(u, size - 1)
        freqs = np.stack([_integer_table(np.bincount(index[:, d], minlength=size).astype(np.float64))
                          for d in range(dim)])
        bits = -np.log2(np.take_along_axis(freqs, index.T, axis=1) / (1 << fmt.FREQUENCY_BITS)).sum(0)
        bits += (u >= size - 1).sum(1) * fmt.ESCAPE_BITS
        qualities.append({
            "name": level.name,
            "description": level.description,
            "step_factor": level.step_factor,
            "train_bits_per_image": round(float(bits.mean()), 3),
            "steps": steps.tolist(),
            "centers": centers.tolist(),
            "frequencies": freqs.tolist(),
        })
    return {
        "format": fmt.TABLES_FORMAT,
        "format_version": fmt.TABLES_VERSION,
        "latent_dim": dim,
        "step_bits": fmt.STEP_BITS,
        "frequency_bits": fmt.FREQUENCY_BITS,
        "latent_clamp": fmt.LATENT_CLAMP,
        "escape_bits": fmt.ESCAPE_BITS,
        "fitted_on": {"images": n, **(source or {})},
        "posterior_std_median": [round(float(s), 6) for s in sigma],
        "default_quality": default,
        "qualities": qualities,
    }


def _mode(values: np.ndarray) -> int:
    symbols, counts = np.unique(values, return_counts=True)
    return int(symbols[int(np.argmax(counts))])


# -- loaded tables -------------------------------------------------------------------------------


class QualityTable:
    """The integer tables of one quality level, ready for the entropy coder."""

    def __init__(self, index: int, entry: dict[str, Any], dim: int, where: str) -> None:
        try:
            self.name = str(entry["name"])
            self.description = str(entry.get("description", ""))
            self.step_factor = float(entry.get("step_factor", 0.0))
            self.train_bits_per_image = float(entry.get("train_bits_per_image", 0.0))
            self.steps = np.array(entry["steps"], dtype=np.int64)
            self.centers = np.array(entry["centers"], dtype=np.int64)
            self.frequencies = np.array(entry["frequencies"], dtype=np.int64)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise BundleError(f"{where}: quality {index} is malformed ({type(e).__name__}: {e})") from None
        self.index = index
        problem = self._problem(dim)
        if problem:
            raise BundleError(f"{where}: quality {index} ({self.name!r}) is invalid: {problem}")
        self.size = self.frequencies.shape[1]
        self.escape = self.size - 1
        self.limits = max_symbol(self.steps)
        # Exact: integers below 2**16 over a power of two. C-contiguous float64, as constriction wants.
        self.probabilities = np.ascontiguousarray(self.frequencies / float(1 << fmt.FREQUENCY_BITS), dtype=np.float64)

    def _problem(self, dim: int) -> str | None:
        if not self.name or self.steps.shape != (dim,) or self.centers.shape != (dim,):
            return f"needs a name and {dim} steps and centers"
        if self.steps.min() < fmt.MIN_STEP_UNITS or self.steps.max() > fmt.LATENT_CLAMP << fmt.STEP_BITS:
            return "step out of range"
        if (np.abs(self.centers) > max_symbol(self.steps)).any():
            return "centre symbol out of range"
        f = self.frequencies
        if f.ndim != 2 or f.shape[0] != dim or not 2 <= f.shape[1] <= fmt.MAX_ALPHABET:
            return f"frequencies must be {dim} rows of 2..{fmt.MAX_ALPHABET} entries"
        if f.min() < 1 or (f.sum(1) != 1 << fmt.FREQUENCY_BITS).any():
            return f"every frequency must be >= 1 and each row must sum to 2**{fmt.FREQUENCY_BITS}"
        return None

    def symbols(self, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Table indices int32 (N, D) (escape = A-1) and the zigzag values int64 (N, D) behind them."""
        u = zigzag(quantize(means, self.steps) - self.centers)
        return np.minimum(u, self.escape).astype(np.int32), u

    def latents(self, u: np.ndarray) -> np.ndarray:
        """Zigzag values (N, D) -> latents float32 (N, D); ContainerError if out of range."""
        symbols = self.centers + unzigzag(u)
        if (np.abs(symbols) > self.limits).any():
            raise ContainerError("container is damaged (a latent symbol is out of range)")
        return dequantize(symbols, self.steps)


@dataclass(frozen=True)
class CodecTables:
    """Every quality level of a bundle's codec.json."""

    qualities: tuple[QualityTable, ...]
    default: QualityTable
    fitted_on: dict[str, Any]

    def lookup(self, quality: str | int | None) -> QualityTable:
        """A quality by name or index; None gives the default. InputError if unknown."""
        if quality is None:
            return self.default
        for table in self.qualities:
            if quality == table.name or (isinstance(quality, (int, np.integer)) and not isinstance(quality, bool)
                                         and int(quality) == table.index):
                return table
        if isinstance(quality, str) and quality.isdigit():
            return self.lookup(int(quality))
        names = ", ".join(t.name for t in self.qualities)
        raise InputError(f"unknown quality {quality!r}; choose one of: {names} (or 0..{len(self.qualities) - 1})")


def parse_tables(text: str | bytes, dim: int, where: str = fmt.TABLES_FILE) -> CodecTables:
    """Validate codec.json content for a model with ``dim`` latent dimensions."""
    try:
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deep nesting: RecursionError
        raise BundleError(f"{where}: unreadable codec tables ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt.TABLES_FORMAT:
        raise BundleError(f"{where}: not edgevae codec tables")
    if obj.get("format_version") != fmt.TABLES_VERSION:
        raise BundleError(f"{where}: codec tables version {obj.get('format_version')} is not supported "
                          f"(supports {fmt.TABLES_VERSION}); upgrade edgevae or refit the tables")
    expected = {"latent_dim": dim, "step_bits": fmt.STEP_BITS, "frequency_bits": fmt.FREQUENCY_BITS,
                "latent_clamp": fmt.LATENT_CLAMP, "escape_bits": fmt.ESCAPE_BITS}
    for key, value in expected.items():
        if obj.get(key) != value:
            raise BundleError(f"{where}: {key} is {obj.get(key)!r}, this edgevae needs {value}")
    entries = obj.get("qualities")
    if not isinstance(entries, list) or not 1 <= len(entries) <= fmt.MAX_QUALITY_INDEX + 1:
        raise BundleError(f"{where}: needs 1..{fmt.MAX_QUALITY_INDEX + 1} quality levels")
    qualities = tuple(QualityTable(i, e if isinstance(e, dict) else {}, dim, where) for i, e in enumerate(entries))
    if len({q.name for q in qualities}) != len(qualities):
        raise BundleError(f"{where}: quality names are not unique")
    default = [q for q in qualities if q.name == obj.get("default_quality")]
    if not default:
        raise BundleError(f"{where}: default_quality {obj.get('default_quality')!r} is not one of the qualities")
    fitted_on = obj.get("fitted_on") if isinstance(obj.get("fitted_on"), dict) else {}
    return CodecTables(qualities=qualities, default=default[0], fitted_on=fitted_on)


def load_tables(bundle: Bundle) -> CodecTables:
    """The codec tables of a verified bundle; BundleError if it has none or they are invalid."""
    path = bundle.codec_path
    if path is None:
        raise BundleError(
            f"{bundle.path}: this model bundle has no codec tables ({fmt.TABLES_FILE}); export it again with "
            f"'edgevae-train export' or add them with 'edgevae-train codec-tables {bundle.path}'"
        )
    try:
        raw = bundle.files["codec"] if "codec" in bundle.files else path.read_bytes()  # the bytes load() hashed
    except OSError as e:
        raise BundleError(f"{path}: cannot read codec tables ({e.strerror})") from None
    # Re-check the hash of the bytes actually parsed: the file may have changed since load().
    if hashlib.sha256(raw).hexdigest() != bundle.manifest["codec"]["sha256"]:
        raise digest_mismatch(path)
    return parse_tables(raw, bundle.latent_dim, str(path))


def bundle_step_factors(bundle: Bundle) -> list[float] | None:
    """The step factors of a bundle's quality levels, or None if it has no codec tables."""
    if bundle.codec_path is None:
        return None
    return [table.step_factor for table in load_tables(bundle).qualities]


# -- entropy coding of one image ------------------------------------------------------------------


def _constriction() -> Any:
    import constriction

    return constriction


def _words(payload: bytes) -> np.ndarray:
    """Payload bytes -> constriction's uint32 words: big-endian, zero-padded to whole words.

    Big-endian words make the payload one number, most significant byte first, so dropping
    trailing bytes rounds that number down and the zero padding restores its length.
    """
    padded = payload + b"\0" * (-len(payload) % fmt.WORD_BYTES)
    return np.frombuffer(padded, dtype=">u4").astype(np.uint32)


def _read_one(constriction: Any, family: Any, escape_model: Any, table: QualityTable,
              payload: bytes) -> np.ndarray:
    """Range-decode one image's zigzag values (D,) int64; may raise constriction's errors."""
    decoder = constriction.stream.queue.RangeDecoder(_words(payload))
    index = decoder.decode(family, table.probabilities)
    row = index.astype(np.int64)
    escapes = index == table.escape
    if escapes.any():
        row[escapes] = table.escape + decoder.decode(escape_model, int(escapes.sum()))
    return row


def _shortest(full: bytes, decodes: Callable[[bytes], bool], estimate: int) -> bytes:
    """The shortest byte string that still decodes to the same symbols (range-coder termination).

    The values that decode to a given message form an interval, so if some n-byte string
    (zero-padded) lies in it, one of the two n-byte neighbours of ``full`` does: its prefix
    rounded down or up. Valid lengths are closed upwards, so the search walks from the
    estimate down (or up) to the first length that works. The result never ends in a zero
    byte (dropping it would give the same number), which the decoder checks.
    """
    def at(n: int) -> bytes | None:
        if n >= len(full):
            if not decodes(full):
                raise RuntimeError("the range coder's own output does not decode")
            return full.rstrip(b"\0") if decodes(full.rstrip(b"\0")) else full
        down = full[:n]
        if decodes(down):
            return down
        if n and full[n - 1] < 0xFF:
            up = full[: n - 1] + bytes([full[n - 1] + 1])
            if decodes(up):
                return up
        return None

    n = max(0, min(estimate, len(full)))
    best = at(n)
    while best is None:
        n += 1
        best = at(n)
    while n > 0:
        shorter = at(n - 1)
        if shorter is None:
            break
        best, n = shorter, n - 1
    if best.endswith(b"\0"):
        raise RuntimeError("range-coded payload cannot be cut to a canonical form")
    return best


def _interval_prefix(full: bytes, position: int, lower: int, width: int) -> bytes:
    """The shortest byte string whose zero-padded value lies in the range coder's final interval.

    At the scale of ``position + 2`` words (words already written, plus the 64-bit state),
    the sealed output ``full`` is a point of the final interval [A, A + width), and
    A = lower (mod 2**64) with 0 <= point - A < 2**64, which pins A down. The answer is the
    first byte length n at which some multiple of 2**(bits - 8n) falls inside the interval.
    """
    bits = 8 * fmt.WORD_BYTES * (position + 2)
    point = int.from_bytes(full, "big") << (bits - 8 * len(full))
    start = point - ((point - lower) % (1 << 64))
    end = min(start + width, 1 << bits)

    def multiple(n: int) -> int | None:  # the smallest multiple of 2**(bits - 8n) in the interval
        unit = 1 << (bits - 8 * n)
        k = -(-start // unit)
        return k if k * unit < end else None

    # Lengths that work are closed upwards (a multiple of 2**m is one of 2**(m-8) too). An interval
    # this wide always holds a multiple at n = ceil((bits - log2 width) / 8): start there, then
    # walk down while shorter strings still work.
    n = min(bits // 8, -(-(bits - width.bit_length() + 1) // 8))
    k = multiple(n)
    while k is None and n < bits // 8:
        n += 1
        k = multiple(n)
    while n > 0 and (shorter := multiple(n - 1)) is not None:
        n, k = n - 1, shorter
    return full if k is None else k.to_bytes(n, "big")


def encode_payloads(table: QualityTable, means: np.ndarray) -> list[bytes]:
    """Entropy-code the posterior means (N, D) of N images: one payload per image.

    Each image is one range-coder message: its D table indices (escape = A-1), then the
    escaped values, uniform over 2**ESCAPE_BITS. The coder's sealed words are cut to the
    shortest byte string that decodes to the same message: computed from the coder's final
    interval (:func:`_interval_prefix`) and checked by decoding it, with a search
    (:func:`_shortest`) as the fallback. This saves ~2 bytes per image over the sealed words
    (and ~2.4 over constriction's ANS coder, whose small initial state wastes up to 24 bits).
    """
    constriction = _constriction()
    family = constriction.stream.model.Categorical(perfect=False)
    escape_model = constriction.stream.model.Uniform(1 << fmt.ESCAPE_BITS)
    index, u = table.symbols(means)
    escapes = index == table.escape
    has_escape = escapes.any(1)
    payloads = []
    for i in range(len(index)):
        # A fresh encoder per image: RangeEncoder.clear() keeps a pending carry word (constriction 0.5).
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(index[i], family, table.probabilities)
        if has_escape[i]:
            encoder.encode((u[i][escapes[i]] - table.escape).astype(np.int32), escape_model)
        position, (lower, width) = encoder.pos()
        full = encoder.get_compressed().astype(">u4").tobytes()
        want = u[i]

        def decodes(candidate: bytes, want: np.ndarray = want) -> bool:
            try:
                return _read_one(constriction, family, escape_model, table, candidate).tobytes() == want.tobytes()
            except Exception:  # an invalid candidate makes constriction raise; it is simply not valid
                return False

        # Computed from the coder's final interval and checked by decoding it; the search is the fallback.
        payload = _interval_prefix(full, int(position), int(lower), int(width))
        if not decodes(payload) or payload.endswith(b"\0"):
            payload = _shortest(full, decodes, len(payload))
        payloads.append(payload)
    return payloads


def decode_payloads(table: QualityTable, payloads: Sequence[bytes], labels: Sequence[int] | None = None) -> np.ndarray:
    """Inverse of :func:`encode_payloads`: latents float32 (N, D). ContainerError on damage.

    ``labels`` are the images' indices in their container, used in error messages.
    """
    constriction = _constriction()
    family = constriction.stream.model.Categorical(perfect=False)
    escape_model = constriction.stream.model.Uniform(1 << fmt.ESCAPE_BITS)
    u = np.empty((len(payloads), len(table.steps)), dtype=np.int64)
    for i, payload in enumerate(payloads):
        label = labels[i] if labels is not None else i
        if payload and payload[-1] == 0:
            raise ContainerError(f"container is damaged (image {label}: payload ends in a zero byte)")
        try:
            u[i] = _read_one(constriction, family, escape_model, table, payload)
        except Exception as e:  # constriction reports streams invalid for the model with untyped errors
            raise ContainerError(f"container is damaged (image {label}: {type(e).__name__})") from None
    return table.latents(u)


# -- the public codec ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerInfo:
    """What a container says about itself, and whether it fits a given model."""

    bytes: int
    version: int
    mode: str
    quality_index: int
    quality: str | None  # the level's name, if the model's tables are known
    count: int
    payload_bytes: int
    overhead_bytes: int
    fingerprint_prefix: str  # one hex digit: the high 4 bits of the model fingerprint
    model_matches: bool | None  # None: no model to compare with
    checksum_ok: bool | None  # None: not checked (no model, or another model)
    image_shape: tuple[int, int, int] | None
    bits_per_pixel: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


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
            bpp = 8 * len(parsed.data) / (header.count * int(np.prod(shape)))
            if tables is not None and header.mode == fmt.MODE_LOSSY and header.quality < len(tables.qualities):
                name = tables.qualities[header.quality].name
    return ContainerInfo(
        bytes=len(parsed.data), version=header.version, mode=header.mode_name, quality_index=header.quality,
        quality=name, count=header.count, payload_bytes=len(parsed.data) - parsed.overhead_bytes,
        overhead_bytes=parsed.overhead_bytes, fingerprint_prefix=f"{header.fingerprint_prefix:x}",
        model_matches=matches, checksum_ok=checksum_ok, image_shape=shape, bits_per_pixel=bpp,
    )


class Codec:
    """Compress and decompress images with a loaded model and its bundle's codec tables.

        >>> codec = Codec(edgevae.runtime.load())
        >>> data = codec.compress(images, quality="balanced")   # bytes: one .evz container
        >>> codec.decompress(data)                              # uint8 (N, C, H, W)
        >>> codec.decompress(data, indices=[3])                 # image 3 alone

    ``batch_size`` bounds how many images go through the ONNX graphs at once; it changes
    speed and memory, never the bytes. Thread-safe like the model it wraps.
    """

    def __init__(self, model: EdgeVAE, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.tables = load_tables(model.bundle)
        self.fingerprint = model.bundle.fingerprint

    def __repr__(self) -> str:
        return f"Codec({self.model!r}, qualities={list(self.qualities)})"

    @property
    def qualities(self) -> tuple[str, ...]:
        """Quality names, smallest files first; a quality may also be given by its index."""
        return tuple(q.name for q in self.tables.qualities)

    @property
    def default_quality(self) -> str:
        """The quality used when none is given."""
        return self.tables.default.name

    def _means(self, images: np.ndarray, progress: Progress | None) -> np.ndarray:
        batch = self.model.check_images(images)
        if len(batch) == 0:
            raise InputError("no images to compress")
        parts = []
        for start in range(0, len(batch), self.batch_size):
            parts.append(self.model.encode(batch[start : start + self.batch_size])[0])
            if progress:
                progress(len(parts[-1]))
        return np.concatenate(parts)

    def _pack(self, table: QualityTable, payloads: list[bytes]) -> bytes:
        return fmt.pack(fmt.MODE_LOSSY, table.index, self.fingerprint, self.model.image_shape, payloads)

    def compress(self, images: np.ndarray, quality: str | int | None = None,
                 progress: Progress | None = None, lossless: bool = False) -> bytes:
        """One container holding all ``images`` (uint8 (N, C, H, W) or one (C, H, W)).

        ``quality`` is a name from :attr:`qualities` or its index (default: the balanced
        level). ``progress`` is called with the number of images finished after each batch.
        ``lossless=True`` codes the exact pixels by bits-back coding (runtime/bitsback.py);
        ``quality`` does not apply then, and a model loaded with ``threads=1`` is fastest (the
        coder runs two lanes in parallel threads itself).
        """
        if lossless:
            return self._compress_lossless(images, quality, progress)
        table = self.tables.lookup(quality)
        return self._pack(table, encode_payloads(table, self._means(images, progress)))

    def compress_each(self, images: np.ndarray, quality: str | int | None = None,
                      progress: Progress | None = None, lossless: bool = False) -> list[bytes]:
        """One single-image container per image (what ``edgevae compress --split`` writes)."""
        if lossless:
            batch = self.model.check_images(images)
            if len(batch) == 0:
                raise InputError("no images to compress")
            return [self._compress_lossless(image, quality, progress) for image in batch]
        table = self.tables.lookup(quality)
        return [self._pack(table, [p]) for p in encode_payloads(table, self._means(images, progress))]

    def _compress_lossless(self, images: np.ndarray, quality: str | int | None, progress: Progress | None) -> bytes:
        from edgevae.runtime import bitsback

        if quality is not None:
            raise InputError("a quality does not apply to lossless compression (it keeps every pixel)")
        batch = self.model.check_images(images)
        if len(batch) == 0:
            raise InputError("no images to compress")
        payload = bitsback.encode(self.model, batch, progress).payload
        return fmt.pack_lossless(self.fingerprint, self.model.image_shape, len(batch), payload)

    def _open(self, data: bytes) -> tuple[fmt.Container, QualityTable | None]:
        """Parse and verify a container of this model; the quality table (None if lossless)."""
        parsed = fmt.parse(data)
        header = parsed.header
        prefix = fmt.fingerprint_prefix(self.fingerprint)
        if header.fingerprint_prefix != prefix:
            raise ContainerError(
                f"container was made by another model (fingerprint {header.fingerprint_prefix:x}.., "
                f"this model is {prefix:x}..); pass the bundle that made it with --model"
            )
        parsed.verify(self.fingerprint, self.model.image_shape)
        if header.mode == fmt.MODE_LOSSLESS:
            if header.quality:
                raise ContainerError(f"container is damaged (quality index {header.quality} in a lossless container)")
            return parsed, None
        if header.quality >= len(self.tables.qualities):
            raise ContainerError(f"container is damaged (quality index {header.quality} unknown to this model)")
        return parsed, self.tables.qualities[header.quality]

    def decompress(self, data: bytes, indices: Sequence[int] | None = None,
                   progress: Progress | None = None) -> np.ndarray:
        """Decode a container to uint8 images (N, C, H, W); ``indices`` selects images (any order).

        Only the selected images' payloads are decoded (a lossless container is decoded whole,
        its images being chained, and returns the exact pixels). ContainerError if the bytes are not a
        container of this model and format version, or are damaged; InputError for bad indices.
        """
        parsed, table = self._open(data)
        count = parsed.header.count
        if indices is None:
            chosen = list(range(count))
        else:
            from edgevae.runtime.model import integer

            chosen = [integer(i, "image index", None) for i in indices]  # 1.7 is refused, not read as 1
            bad = [i for i in chosen if not 0 <= i < count]
            if bad:
                raise InputError(f"image index {bad[0]} is out of range: the container holds {count} image(s)")
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
        return describe(data, self.model.bundle, self.tables)
