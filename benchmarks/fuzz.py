"""Fuzz the .evz reader: mutate valid containers and check what every case does.

    python benchmarks/fuzz.py                          # shipped bundle, 100,000 cases
    python benchmarks/fuzz.py --model BUNDLE --cases 3000 --json fuzz.json --md fuzz.md

Valid containers are made from images the model samples (no data set needed): one single-image
container per quality, 2- and 10-image containers, and lossless containers of 1, 8 and 70 images
(one and two bits-back chains). Each case mutates one of them:

- raw damage (the CRC is left as it is): ``bit_flip`` (1-4 bits), ``byte_set`` (1-4 bytes),
  ``truncate``, ``extend``, ``insert``, ``delete``, ``splice`` (head of one container, tail of
  another), ``random_bytes`` (random data, half of it starting with the magic and version);
- header edits with the CRC recomputed for this model, as a forger would (they get past the
  checksum and test the parser behind it): ``forged_count_1e9``, ``forged_count_random``,
  ``forged_length``, ``forged_quality``, ``forged_mode``, ``forged_version``,
  ``forged_payload`` (payload bytes replaced), ``forged_bit_flip``.

Every case runs ``Codec.decompress`` and ``codec.describe``. Outcomes:

- rejected: a typed edgevae error (ContainerError / InputError), one line;
- crash: any other exception; hang: a case running longer than ``--hang-seconds``;
- undetected corruption: raw damage that decodes without error to pixels other than the
  original's, unless the damage produced exactly another genuine container (a splice can:
  counted as benign). Forged cases that decode are counted apart, as ``forged_accepted``: a
  valid CRC makes them well-formed containers, so the codec cannot tell them from genuine ones;
- peak memory: process peak RSS before and after the run, and the tracemalloc peak of decoding
  containers that claim 10^9 and 2^35-1 images (must stay far below one allocation per image).

Prints a table; ``--json`` writes every figure. Exit code 1 if anything crashed, hung or went
undetected.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import struct
import sys
import time
import tracemalloc
from collections import Counter, defaultdict
from typing import Any, Callable

import numpy as np

import edgevae.runtime as ev
from edgevae.runtime import container as fmt
from edgevae.runtime.codec import Codec, LosslessCodec, describe
from edgevae.runtime.tables import load_tables
from edgevae.runtime.errors import EdgeVAEError

RAW_KINDS = ("bit_flip", "byte_set", "truncate", "extend", "insert", "delete", "splice", "random_bytes")
FORGED_KINDS = ("forged_count_1e9", "forged_count_random", "forged_length", "forged_quality", "forged_mode",
                "forged_version", "forged_payload", "forged_bit_flip")
KINDS = RAW_KINDS + FORGED_KINDS


class Hang(Exception):
    """A case ran longer than the hang limit."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang()


def specimens(codec: Codec, seed: int) -> list[tuple[bytes, np.ndarray]]:
    """Valid containers and their decoded images."""
    images = codec.model.sample(12, seed=seed)
    made = [codec.compress(images[0], quality) for quality in codec.qualities]
    made += [codec.compress(images[1:3]), codec.compress(images[2:12], codec.qualities[-1])]
    many = codec.model.sample(70, seed=seed + 1)
    lossless = LosslessCodec(codec.model)
    made += [lossless.compress(images[0]), lossless.compress(images[4:12]), lossless.compress(many)]
    return [(data, codec.decompress(data)) for data in made]


class Forger:
    """Rebuilds containers with a valid CRC for one model."""

    def __init__(self, codec: Codec) -> None:
        self.fingerprint = codec.fingerprint
        self.shape = codec.model.image_shape

    def seal(self, body: bytes) -> bytes:
        return body + struct.pack(">I", fmt.checksum(body, self.fingerprint, self.shape))

    def with_count(self, data: bytes, count: int) -> bytes:
        """Set the multi bit and replace (or insert) the image count."""
        body = data[:-4]
        start = fmt.HEADER_BYTES
        if body[1] & fmt.MULTI_BIT:
            _, after = fmt.decode_varint(body, start, len(body), "count")
            rest = body[after:]
        else:
            rest = body[start:]
        return self.seal(body[:1] + bytes([body[1] | fmt.MULTI_BIT]) + body[2:start] + fmt.encode_varint(count) + rest)


def mutate(kind: str, data: bytes, others: list[bytes], rng: np.random.Generator, forger: Forger) -> bytes:
    """One mutated container of ``kind``."""
    n = len(data)
    if kind == "bit_flip":
        out = bytearray(data)
        for bit in rng.choice(8 * n, size=int(rng.integers(1, 5)), replace=False):
            out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)
    if kind == "byte_set":
        out = bytearray(data)
        for pos in rng.choice(n, size=min(n, int(rng.integers(1, 5))), replace=False):
            out[pos] = int(rng.integers(0, 256))
        return bytes(out)
    if kind == "truncate":
        return data[: int(rng.integers(0, n))]
    if kind == "extend":
        return data + rng.bytes(int(rng.integers(1, 9)))
    if kind == "insert":
        pos = int(rng.integers(0, n + 1))
        return data[:pos] + rng.bytes(int(rng.integers(1, 9))) + data[pos:]
    if kind == "delete":
        pos = int(rng.integers(0, n))
        return data[:pos] + data[pos + int(rng.integers(1, 9)) :]
    if kind == "splice":
        other = others[int(rng.integers(0, len(others)))]
        return data[: int(rng.integers(0, n))] + other[int(rng.integers(0, len(other))) :]
    if kind == "random_bytes":
        noise = rng.bytes(int(rng.integers(0, 65)))
        return bytes([fmt.MAGIC, fmt.VERSION]) + noise if rng.random() < 0.5 else noise
    body = data[:-4]
    if kind == "forged_count_1e9":
        return forger.with_count(data, 10**9)
    if kind == "forged_count_random":
        return forger.with_count(data, int(rng.integers(0, 2**35)))
    if kind == "forged_length":
        if not body[1] & fmt.MULTI_BIT:
            return forger.with_count(data, int(rng.integers(2, 5)))
        count, pos = fmt.decode_varint(body, fmt.HEADER_BYTES, len(body), "count")
        _, after = fmt.decode_varint(body, pos, len(body), "length")
        return forger.seal(body[:pos] + fmt.encode_varint(int(rng.integers(0, 2**int(rng.integers(1, 35))))) + body[after:])
    if kind == "forged_quality":
        quality = int(rng.integers(0, fmt.MAX_QUALITY_INDEX + 1))
        return forger.seal(body[:2] + bytes([quality << fmt.QUALITY_SHIFT | body[2] & fmt.FINGERPRINT_PREFIX_MASK]) + body[3:])
    if kind == "forged_mode":
        mode = int(rng.integers(1, 4))
        return forger.seal(body[:1] + bytes([body[1] & ~(fmt.MODE_MASK << fmt.MODE_SHIFT) & 0xFF | mode << fmt.MODE_SHIFT])
                           + body[2:])
    if kind == "forged_version":
        version = int(rng.choice([0, 2, 3, 15]))
        return forger.seal(body[:1] + bytes([version << fmt.VERSION_SHIFT | body[1] & 0x0F]) + body[2:])
    if kind == "forged_payload":
        out = bytearray(body)
        start = fmt.parse(data).offsets[0]
        if start >= len(out):
            return forger.seal(bytes(out) + rng.bytes(int(rng.integers(1, 6))))
        for pos in rng.integers(start, len(out), size=int(rng.integers(1, 4))):
            out[pos] = int(rng.integers(0, 256))
        return forger.seal(bytes(out))
    if kind == "forged_bit_flip":
        out = bytearray(body)
        bit = int(rng.integers(0, 8 * len(out)))
        out[bit // 8] ^= 1 << (bit % 8)
        return forger.seal(bytes(out))
    raise ValueError(kind)


def run_case(call: Callable[[], Any], hang_seconds: float) -> tuple[str, Any]:
    """("ok", result) | ("rejected", message) | ("crash", repr) | ("hang", None)."""
    signal.setitimer(signal.ITIMER_REAL, hang_seconds)
    try:
        return "ok", call()
    except Hang:
        return "hang", None
    except EdgeVAEError as e:
        return "rejected", str(e)
    except Exception as e:  # the point of a fuzzer: anything untyped is a finding
        return "crash", f"{type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def huge_count_peak(codec: Codec, data: bytes, forger: Forger) -> int:
    """tracemalloc peak (bytes) of decoding and describing containers that claim 1e9 and 2**35-1 images."""
    peak = 0
    for count in (10**9, 2**35 - 1):
        forged = forger.with_count(data, count)
        tracemalloc.start()
        for call in (lambda: codec.decompress(forged), lambda: codec.describe(forged)):
            try:
                call()
            except EdgeVAEError:
                pass
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return peak


def fuzz(codec: Codec, cases: int, seed: int, hang_seconds: float) -> dict[str, Any]:
    """Run the cases; returns every figure of the report."""
    signal.signal(signal.SIGALRM, _on_alarm)
    rng = np.random.default_rng(seed)
    corpus = specimens(codec, seed)
    blobs = [d for d, _ in corpus]
    genuine = set(blobs)
    forger = Forger(codec)
    tables = load_tables(codec.model.bundle)
    peak_huge = huge_count_peak(codec, blobs[-1], forger)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    findings: list[dict[str, str]] = []
    messages: Counter[str] = Counter()
    started = time.perf_counter()
    for case in range(cases):
        kind = KINDS[case % len(KINDS)]
        original, pixels = corpus[int(rng.integers(0, len(corpus)))]
        data = mutate(kind, original, blobs, rng, forger)
        forged = kind.startswith("forged")
        outcome, value = run_case(lambda: codec.decompress(data), hang_seconds)
        described, info = run_case(lambda: describe(data, codec.model.bundle, tables), hang_seconds)
        if described in ("crash", "hang"):
            outcome, value = described, f"describe: {info}"
        if outcome == "ok":
            if value.dtype != np.uint8 or value.shape[1:] != codec.model.image_shape:
                outcome, value = "crash", f"decoded to {value.dtype} {value.shape}"
            elif data in genuine or (not forged and np.array_equal(value, pixels)):
                # Unchanged, or spliced into exactly another genuine container: a valid file.
                outcome = "benign"
            elif forged:
                outcome = "forged_accepted"
            else:
                outcome = "undetected"
        by_kind[kind][outcome] += 1
        if outcome == "rejected":
            messages[str(value).split("(")[0].split(":")[0].strip()] += 1
        if outcome in ("crash", "hang", "undetected") and len(findings) < 20:
            findings.append({"kind": kind, "outcome": outcome, "detail": str(value)[:200], "hex": data.hex()})
    seconds = time.perf_counter() - started
    total = Counter()
    for counts in by_kind.values():
        total.update(counts)
    return {
        "model": str(codec.model.bundle.path),
        "cases": cases,
        "seed": seed,
        "seconds": round(seconds, 2),
        "cases_per_second": round(cases / seconds, 1),
        "rejected": total["rejected"],
        "forged_accepted": total["forged_accepted"],
        "benign": total["benign"],
        "crashes": total["crash"],
        "hangs": total["hang"],
        "undetected_corruptions": total["undetected"],
        "by_kind": {kind: dict(by_kind[kind]) for kind in KINDS},
        "rejection_messages": dict(messages.most_common()),
        "peak_rss_mb_before": round(rss_start / 1024, 1),
        "peak_rss_mb_after": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "huge_count_peak_bytes": peak_huge,
        "findings": findings,
        "specimen_bytes": [len(b) for b in blobs],
    }


def table(result: dict[str, Any]) -> str:
    """The report as a markdown table."""
    columns = ("rejected", "forged_accepted", "benign", "crash", "hang", "undetected")
    lines = ["| mutation | cases | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for kind, counts in result["by_kind"].items():
        lines.append(f"| {kind} | {sum(counts.values())} | " + " | ".join(str(counts.get(c, 0)) for c in columns) + " |")
    lines += [
        "",
        f"{result['cases']} cases in {result['seconds']} s ({result['cases_per_second']}/s): "
        f"crashes {result['crashes']}, hangs {result['hangs']}, undetected corruptions "
        f"{result['undetected_corruptions']}; {result['rejected']} rejected with a typed one-line error, "
        f"{result['forged_accepted']} CRC-forged containers decoded, {result['benign']} benign.",
        f"Peak RSS {result['peak_rss_mb_before']} MB before the cases, {result['peak_rss_mb_after']} MB after; "
        f"decoding a header that claims 10^9 (and 2^35-1) images peaks at "
        f"{result['huge_count_peak_bytes']:,} bytes (tracemalloc).",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Bundle folder (default: $EDGEVAE_MODEL, else the shipped model).")
    parser.add_argument("--cases", type=int, default=100_000, help="Number of mutated containers (default 100,000).")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the images and the mutations.")
    parser.add_argument("--hang-seconds", type=float, default=10.0, help="A case slower than this is a hang.")
    parser.add_argument("--json", dest="json_path", default=None, help="Write every figure to this JSON file.")
    parser.add_argument("--md", dest="md_path", default=None, help="Write the table to this markdown file.")
    args = parser.parse_args()
    codec = Codec(ev.load(args.model, threads=1))
    result = fuzz(codec, args.cases, args.seed, args.hang_seconds)
    text = table(result)
    print(text)
    if args.md_path:
        with open(args.md_path, "w") as f:
            f.write(f"Made by `python benchmarks/fuzz.py {' '.join(sys.argv[1:])}`.\n\n{text}\n")
    if result["findings"]:
        print("\nfindings:", json.dumps(result["findings"], indent=1))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    return 1 if result["crashes"] or result["hangs"] or result["undetected_corruptions"] else 0


if __name__ == "__main__":
    sys.exit(main())
