"""Test vectors for web/exact.js, made by the reference (edgevae.runtime.exact, runtime/bitsback.py).

Run from the repository root:  .venv/bin/python web/test/make_exact_vectors.py
It writes web/test/exact-vectors.json; web/test/exact.test.mjs checks that JavaScript builds the
same exact table set (per-table CRCs, the fingerprint for every bucket precision, sampled values,
exp_exact bit for bit) and the same per-symbol integers (renormalised rows, the posterior's
cumulative at bucket edges, near-lossless reconstruction).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from edgevae.runtime import bitsback, exact
from edgevae.runtime.likelihood import MixtureIndices

OUT = Path(__file__).with_name("exact-vectors.json")


def main() -> None:
    rng = np.random.default_rng(2107)
    xs = [0.0, -0.5, 1.0, -64.0, 64.0, 12.0, -7.0 + 3 / 16, 1e-300, -37.25] + [float(v) for v in rng.uniform(-64, 64, 20)]
    exps = [[struct.pack("<d", x).hex(), struct.pack("<d", float(exact.exp_exact(x))).hex()] for x in xs]
    phi = exact.phi_table()
    edges, centres, groups = exact.buckets(16)
    pick = lambda a, n: [[int(i), int(a[i])] for i in sorted(set(rng.integers(0, len(a), n).tolist()) | {0, len(a) - 1})]  # noqa: E731
    rows = []
    for n in (2, 3, 16, 17, 256):
        for span in (0, 5, 1 << 20, 1 << 30, 1 << 48):
            c = np.sort(rng.integers(0, span + 1, n + 1)) if span else np.full(n + 1, 7)
            rows.append([[int(v) for v in c], [int(v) for v in exact.renorm(c[None])[0]]])
    mean = rng.integers(-8192, 8193, 12)
    mean[:2] = [-8192, 8192]
    logvar = rng.integers(0, 2049, 12)
    logvar[:2] = [0, 2048]
    index = np.sort(rng.integers(0, 65537, (12, 9)), axis=1)
    index[:, 0], index[:, -1] = 0, 65536
    cdf = exact.posterior_cdf(index, mean, logvar, edges)
    posterior = [[int(mean[j]), int(logvar[j]), [int(i) for i in index[j]], [int(v) for v in cdf[j]]] for j in range(12)]
    # reconstruction under random mixture indices (2 images, 5 components, 28 x 28 pixels)
    shape = (2, 5, 1, 28, 28)
    mix = MixtureIndices(rng.integers(-512, 513, shape).astype(np.int32), rng.integers(0, 8161, shape).astype(np.int32),
                         rng.integers(0, 129, shape).astype(np.int32))
    recon = []
    for k in (1, 4, 32):
        bins = bitsback.binning(k)
        j = rng.integers(0, bins.bins, (2, 784))
        lo, hi = bins.starts[j], bins.ends[j]
        px = bitsback.exact_reconstruct(lo, hi, k, mix)
        recon.append([k, j.ravel().tolist(), px.ravel().tolist()])
    vectors = {
        "exp": exps, "table_crcs": exact.table_crcs(16),
        "fingerprints": {str(b): exact.fingerprint(b) for b in range(bitsback.MIN_BUCKET_BITS, bitsback.MAX_BUCKET_BITS + 1)},
        "phi": pick(phi, 40), "edges": pick(edges, 40), "centres": pick(centres, 40), "group_centres": [int(v) for v in groups],
        "sigma_inv": pick(exact.sigma_inv(), 20), "weight": [int(v) for v in exact.weight_table()],
        "pixel_cdf": [[int(s), int(f), int(j), int(exact.pixel_cdf()[s, f, j])] for s, f, j in
                      zip(rng.integers(0, 129, 60), rng.integers(0, 32, 60), rng.integers(0, 511, 60))],
        "renorm": rows, "posterior": posterior,
        "mixture": {"logit": mix.logit_index.ravel().tolist(), "mean": mix.mean_index.ravel().tolist(),
                    "log_scale": mix.log_scale_index.ravel().tolist()},
        "reconstruct": recon,
    }
    OUT.write_text(json.dumps(vectors, separators=(",", ":")) + "\n")
    print(f"{OUT}: {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
