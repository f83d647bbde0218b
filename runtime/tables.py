"""The codec's entropy model: integer quantization, per-quality frequency tables, their fitting and parsing.

Like an entropy model in CompressAI, this module owns the tables: :func:`fit_tables` fits them
at export from the training set's posteriors (CompressAI's ``update()``), :func:`parse_tables`
and :func:`load_tables` read a bundle's ``codec.json`` back, and a :class:`QualityTable` turns
posterior means into table indices and back into latents. runtime/rangecode.py codes those
indices to bytes; runtime/codec.py orchestrates both around the ONNX graphs.

Why a learned, stored model and not the N(0, I) prior: dimensions the VAE does not use have
posteriors equal to the prior with means near 0; coding them on a fixed grid under the prior
would cost bits for nothing. Instead every dimension gets a step proportional to its typical
posterior standard deviation (times a per-quality factor, runtime/quality.py) and an integer
frequency table of its quantized training-set means. Unused dimensions end up with a table that
gives their one symbol almost all the mass: they cost ~0 bits.

Why integers: the decoder must rebuild bit-identical probability tables on every machine
(learned codecs fail across machines when tables come from float math, CompressAI issue #279).
codec.json holds integers only (steps in units of 2**-16, frequencies summing to 2**16); the
coder receives ``frequency / 2**16`` as float64, which is exact, and constriction's
``Categorical(perfect=False)`` turns it into its 24-bit fixed-point CDF with exact float64
arithmetic, so compress and decompress build the same table from the same integers everywhere.
Decoded latents ``symbol * step / 2**16`` are exact in float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edgevae.runtime import container as fmt
from edgevae.runtime.bundle import MAX_TABLES_BYTES, Bundle, read_verified
from edgevae.runtime.errors import BundleError, ContainerError, InputError
from edgevae.runtime.quality import DEFAULT_QUALITY, HIGH_QUALITY_KEY, QUALITY_LEVELS, HighQualityLevel, QualityLevel

#: Additive (Krichevsky-Trofimov) smoothing of the symbol counts: every table entry, including
#: symbols never seen in training and the escape, keeps a nonzero frequency.
SMOOTHING = 0.5


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


def code_bits(frequencies: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Ideal code length in bits, float64 (N,), of zigzag values ``u`` (N, D) under integer
    frequency rows (D, A): -log2(frequency / 2**FREQUENCY_BITS) of each dimension's table index
    (escape = A-1), plus ESCAPE_BITS per escaped dimension (FORMAT.md §3). A payload is this
    rounded up to whole bytes, give or take the range coder's termination."""
    u = np.asarray(u, dtype=np.int64)
    index = np.minimum(u, frequencies.shape[1] - 1)
    bits = -np.log2(np.take_along_axis(frequencies, index.T, axis=1) / (1 << fmt.FREQUENCY_BITS)).sum(0)
    return bits + (u >= frequencies.shape[1] - 1).sum(1) * fmt.ESCAPE_BITS


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
        bits = code_bits(freqs, u)
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

    def bits(self, u: np.ndarray) -> np.ndarray:
        """Ideal code length in bits, float64 (N,), of zigzag values (N, D) (:func:`code_bits`)."""
        return code_bits(self.frequencies, u)

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

    @property
    def levels(self) -> tuple[QualityLevel, ...]:
        """The levels these tables were fitted for, as export writes them back when it refits."""
        return tuple(QualityLevel(t.name, t.step_factor, t.description) for t in self.qualities)


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
    raw = bundle.files.get("codec")  # the bytes read_bundle read and hashed
    if raw is None:  # a bundle from read_manifest alone: read now, inside the folder, and checked the same way
        entry = bundle.manifest["codec"]
        raw = read_verified(bundle.path, entry["file"], entry["sha256"], MAX_TABLES_BYTES)
    return parse_tables(raw, bundle.latent_dim, str(path))


def bundle_levels(bundle: Bundle) -> tuple[QualityLevel, ...] | None:
    """A bundle's own quality levels (names, step factors, descriptions), or None without codec tables."""
    if bundle.codec_path is None:
        return None
    return load_tables(bundle).levels


def bundle_step_factors(bundle: Bundle) -> list[float] | None:
    """The step factors of a bundle's quality levels, or None if it has no codec tables."""
    levels = bundle_levels(bundle)
    return None if levels is None else [level.step_factor for level in levels]


def high_quality_levels(bundle: Bundle, lossy: Sequence[str] = ()) -> tuple[HighQualityLevel, ...]:
    """The bundle's high-quality levels from its manifest (none if it lists none), in its order.

    BundleError if the list is malformed: not a list of {name, max_error, description}, a K
    outside 1..MAX_ERROR, K not strictly decreasing, or a name repeated or already a lossy level
    (``lossy``) or all digits (indices name lossy levels).
    """
    entries = bundle.manifest.get(HIGH_QUALITY_KEY, [])
    where = f"{bundle.path}: model.json {HIGH_QUALITY_KEY}"
    if not isinstance(entries, list):
        raise BundleError(f"{where} must be a list")
    levels: list[HighQualityLevel] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: entry {i} is not an object")
        name, k = entry.get("name"), entry.get("max_error")
        if not isinstance(name, str) or not name or name.isdigit() or name in lossy or name in (q.name for q in levels):
            raise BundleError(f"{where}: entry {i} needs a new, non-numeric name")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= fmt.MAX_ERROR:
            raise BundleError(f"{where}: entry {i} needs a max_error in 1..{fmt.MAX_ERROR}")
        if levels and k >= levels[-1].max_error:
            raise BundleError(f"{where}: max_error must decrease from level to level (higher quality last)")
        levels.append(HighQualityLevel(name, k, str(entry.get("description", ""))))
    return tuple(levels)
