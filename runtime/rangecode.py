"""Range coding of one quality table's symbols: one payload of bytes per image (docs/FORMAT.md, section 3).

    encode: table indices (escape = A-1) --constriction RangeEncoder, Categorical(perfect=False)-->
            escaped values, uniform over 2**ESCAPE_BITS --> sealed 32-bit words
            --cut to the shortest prefix that still decodes--> payload
    decode: payload --zero-pad to whole big-endian words--> RangeDecoder --> table indices,
            then the escaped values --> zigzag values --> latents (runtime/tables.py)

Only integers reach the coder (frequency / 2**16 is exact in float64), so every machine builds the
same fixed-point tables and decodes the same symbols.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from edgevae.runtime import container as fmt
from edgevae.runtime.errors import ContainerError
from edgevae.runtime.tables import QualityTable


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
    return encode_symbols(table, table.symbols(means)[1])


def encode_symbols(table: QualityTable, u: np.ndarray) -> list[bytes]:
    """Entropy-code chosen zigzag values (N, D) int64 (as :meth:`QualityTable.symbols` gives them,
    or a search picked them, runtime/refine.py): one payload per image, as :func:`encode_payloads`."""
    constriction = _constriction()
    family = constriction.stream.model.Categorical(perfect=False)
    escape_model = constriction.stream.model.Uniform(1 << fmt.ESCAPE_BITS)
    u = np.asarray(u, dtype=np.int64)
    index = np.minimum(u, table.escape).astype(np.int32)
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
