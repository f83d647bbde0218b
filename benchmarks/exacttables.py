"""The exact table set checked against a C program written from docs/FORMAT.md §7.3-§7.4 alone
(benchmarks/exactref/exactref.c): a third implementation beside runtime/exact.py (Python) and
web/exact.js (JavaScript). Used by tests/test_exactref.py and benchmarks/exact_parity.py.

    build(folder)                 compile exactref (cc -O2 -ffp-contract=off: no fused multiply-add)
    run(binary, b, outputs)       its table CRCs, fingerprint and, for network outputs, the CRC of
                                  the per-symbol tables a coder builds for them
    symbol_tables_crc(b, outputs) the same CRC computed with runtime/exact.py, in exactref's order
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevae.runtime import exact

SOURCE = Path(__file__).resolve().parent / "exactref" / "exactref.c"


@dataclass(frozen=True)
class Outputs:
    """Integer network outputs of N images (int32) and their pixels: what the tables are built from."""

    mean_index: np.ndarray  # (N, D)
    logvar_index: np.ndarray  # (N, D)
    logit_index: np.ndarray  # (N, K, P)
    mean_level_index: np.ndarray  # (N, K, P)
    log_scale_index: np.ndarray  # (N, K, P)
    pixels: np.ndarray  # uint8 (N, P)

    def to_bytes(self) -> bytes:
        n, d = self.mean_index.shape
        k, p = self.logit_index.shape[1:]
        parts = [np.array([n, d, k, p], "<i4")] + [np.ascontiguousarray(a, "<i4") for a in (
            self.mean_index, self.logvar_index, self.logit_index, self.mean_level_index, self.log_scale_index)]
        return b"".join(a.tobytes() for a in parts) + np.ascontiguousarray(self.pixels, np.uint8).tobytes()


def build(folder: Path) -> Path:
    """Compile exactref into ``folder``; RuntimeError with the compiler's message if that fails."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    binary = Path(folder) / "exactref"
    proc = subprocess.run([cc, "-O2", "-std=c11", "-ffp-contract=off", "-o", str(binary), str(SOURCE), "-lm"],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"compiling {SOURCE.name} failed: {proc.stderr.strip()}")
    return binary


def run(binary: Path, bucket_bits: int, outputs: Outputs | None = None, work: Path | None = None) -> dict[str, int]:
    """exactref's ``name = value`` lines as a dict (CRCs, fingerprint, and with ``outputs`` the
    per-symbol tables' CRC under "symbol tables crc")."""
    args = [str(binary), str(bucket_bits)]
    if outputs is not None:
        path = Path(work or binary.parent) / "exactref-input.bin"
        path.write_bytes(outputs.to_bytes())
        args.append(str(path))
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    return {k.strip(): int(v) for k, v in (line.split("=") for line in proc.stdout.splitlines())}


def python_crcs(bucket_bits: int) -> dict[str, int]:
    """The same table CRCs and fingerprint from runtime/exact.py, under exactref's names."""
    names = {"pixel_cdf": "G", "weight": "WEIGHT", "sigma_inv": "SIGMA_INV", "phi": "PHI", "edges": "E",
             "centres": "centre", "group_centres": "group_centre"}
    out = {f"crc({names[k]})": v for k, v in exact.table_crcs(bucket_bits).items()}
    out["fingerprint"] = exact.fingerprint(bucket_bits)
    return out


def _masses(floats: np.ndarray) -> np.ndarray:
    """constriction floats (mass - 1) -> int32 masses."""
    return floats.astype(np.int64) + 1


def symbol_tables_crc(bucket_bits: int, o: Outputs) -> int:
    """CRC-32 of the per-symbol tables (int32 masses, little-endian) in exactref's order: per
    image, per latent dimension the posterior's stage 1 and stage 2 of its mode's group; per pixel,
    if K > 1 the mixture weights and the component posterior at its level, then stage 1 and stage
    2 (the level's group) of its first most probable component."""
    edges, _, _ = exact.buckets(bucket_bits)
    half = bucket_bits // 2
    groups, fine, buckets = 1 << half, 1 << (bucket_bits - half), 1 << bucket_bits
    g_table = exact.pixel_cdf().astype(np.int64)
    weight = exact.weight_table()
    crc = 0
    for n in range(len(o.mean_index)):
        m, lv = o.mean_index[n].astype(np.int64), o.logvar_index[n].astype(np.int64)
        stage1 = exact.renorm(exact.posterior_cdf(np.arange(0, buckets + 1, fine)[None, :].repeat(len(m), 0), m, lv, edges))
        mode = np.searchsorted(edges, m << 10, side="right")
        gamma = mode // fine
        stage2 = exact.renorm(exact.posterior_cdf(gamma[:, None] * fine + np.arange(fine + 1), m, lv, edges))
        rows = [np.concatenate([_masses(stage1[d]), _masses(stage2[d])]) for d in range(len(m))]
        a, u, s = (x[n].astype(np.int64) for x in (o.logit_index, o.mean_level_index, o.log_scale_index))
        v = o.pixels[n].astype(np.int64)
        k_count, p_count = a.shape

        def level_cdf(k: np.ndarray, level: np.ndarray) -> np.ndarray:
            uu, ss = u[k, np.arange(p_count)], s[k, np.arange(p_count)]
            inner = g_table[ss, uu % 32, np.clip(level - 1 - uu // 32 + 255, 0, 510)] + level
            return np.where(level <= 0, 0, np.where(level >= 256, 1 << 24, inner))

        per_pixel = []
        best = np.zeros(p_count, dtype=np.int64)
        if k_count > 1:
            w = _masses(exact.categorical(weight[np.minimum(a.max(0) - a, 512)].T))  # (P, K)
            joint = np.stack([w[:, k] * (level_cdf(np.full(p_count, k), v + 1) - level_cdf(np.full(p_count, k), v))
                              for k in range(k_count)], axis=1)
            best = joint.argmax(1)
            per_pixel += [w, _masses(exact.categorical(joint))]
        bounds = np.arange(0, 257, 16)
        cum1 = np.stack([level_cdf(best, np.full(p_count, b)) for b in bounds], axis=1)
        per_pixel.append(np.diff(cum1, axis=1))
        cum2 = np.stack([level_cdf(best, (v // 16) * 16 + i) for i in range(17)], axis=1)
        per_pixel.append(_masses(exact.renorm(cum2)))
        body = np.concatenate(rows + [np.concatenate(per_pixel, axis=1).reshape(-1)])
        crc = zlib.crc32(body.astype("<i4").tobytes(), crc)
    return crc
