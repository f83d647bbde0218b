"""Encoder-side latent refinement (issue 22): choose each image's lossy symbols with the decoder in the loop.

    images --encoder.onnx--> means --QualityTable.symbols (rounding)--> start symbols
    --greedy coordinate descent, a few passes over the D dimensions: try symbol +-1 (+-radius) in
      dimension d for every image of a chunk, decode all those candidates in one decoder.onnx call,
      keep a move only if the image's cost drops--> refined symbols
    --rangecode.encode_symbols--> payloads (an ordinary lossy container, FORMAT.md §3)

The plain codec codes the rounded posterior mean; nothing in the format asks for that. Any
symbol vector is a valid payload, and the decoder that will show the image is known at compress
time, so the encoder may pick the vector whose *decoded* image is best for its bytes. Decoding is
unchanged (same container, tables and decoder), so every release decodes refined files, in
Python and in web/; only compress pays (one decoder call per candidate).

**Cost of an image** (lower is better)::

    cost = bits + beta * 10 log10(max(SSE, 1))        (= bits - beta * PSNR + a constant)

- ``bits``: the symbols' exact code length under the level's frequency tables
  (:func:`edgevae.runtime.tables.code_bits`: -log2 of frequency / 2**16 per dimension, escapes
  included); a payload is this in whole bytes, give or take the coder's termination.
- ``SSE``: squared error of decoder.onnx's uint8 ``pixels`` against the input, summed over the
  image. Floored at 1 so the term stays finite (a perfect 28x28 reconstruction is not a case
  this codec meets; the floor only caps PSNR at 58.9 dB).
- ``beta``: bits one dB of PSNR is worth. Distortion in dB, not a plain ``lambda * SSE``, because
  the codec is judged by mean bytes against mean PSNR over images (BENCHMARKS.md §2), and mean
  PSNR is the mean of per-image log errors: minimising the sum of these costs is the Lagrangian
  of exactly that pair. A ``lambda * SSE`` weighs a dB at a badly reconstructed image many
  times more than a dB at a good one.

**beta per level** (:func:`default_beta`): ``BETA_PER_BIT * the level's mean bits``
(``train_bits_per_image`` of codec.json). The classical codecs edgevae is compared with need a
roughly constant *fraction* more bytes per dB in this range (WebP and JPEG: 7-9 % per dB on
Fashion-MNIST between 21 and 25 dB, benchmarks/results/rd.md), so a change improves the bytes
ratio at equal PSNR iff it saves more than that fraction of the file per dB it loses: a beta
proportional to the level's rate. The constant was chosen on a sweep of 0.02-0.3 on 300 test
images (benchmarks/results/refine-sweep-beta/refine.md): the WebP ratio is best, and flat, at
0.085-0.15 at every level WebP's range reaches.

**Search settings** (benchmarks/results/refine-sweep-search/refine.md): two passes of +-1. One
pass is twice as fast and gives about 80 % of the gain; a third pass adds 0.02-0.04 dB; +-2
candidates find the same symbols at half the speed.

**Determinism.** The search visits dimensions in a fixed order and breaks ties by a fixed
candidate order; every decision of an image depends only on that image's pixels and the decoder's
output for its own candidates, and onnxruntime's CPU decoder gives each row the same pixels in
any batch and at any thread count (the same property decompress relies on, tested). So refined
bytes do not depend on batch size or threads either (tests/test_refine.py). An image is not tried
again at a dimension where nothing has changed since it was last turned down there (the same
candidates would be turned down again): that changes nothing but time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgevae.runtime.errors import InputError
from edgevae.runtime.model import EdgeVAE
from edgevae.runtime.tables import QualityTable, dequantize, unzigzag, zigzag

#: beta = BETA_PER_BIT * the level's mean code length: one dB is worth this fraction of the file.
BETA_PER_BIT = 0.085

#: Images per search chunk: its candidates (up to 2 * radius of them per image) go through
#: decoder.onnx in one call. It sets speed and memory, never the bytes.
DEFAULT_CHUNK = 128

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Search:
    """How :func:`refine` searches.

    ``passes``: sweeps over the D dimensions (each tries every dimension once); ``radius``:
    candidates k +- 1 .. k +- radius per dimension; ``beta``: bits per dB of PSNR
    (None: :func:`default_beta` of the level).
    """

    passes: int = 2
    radius: int = 1
    beta: float | None = None

    def __post_init__(self) -> None:
        for name in ("passes", "radius"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"refine {name} must be an integer >= 1, got {value!r}")
        beta = self.beta
        if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float, np.number))
                                 or not math.isfinite(beta) or beta <= 0):
            raise InputError(f"refine beta (bits per dB) must be a finite number > 0, got {beta!r}")


@dataclass(frozen=True)
class Refined:
    """What :func:`refine` chose, and what the search saw, for N images.

    ``u``: zigzag values int64 (N, D) to code (:func:`edgevae.runtime.rangecode.encode_symbols`);
    ``pixels``: the decoder's uint8 (N, C, H, W) image for them (what decompress returns);
    ``bits`` / ``sse``: their code length (float64) and squared error (int64) per image;
    ``start_bits`` / ``start_sse``: the same for the rounded symbols; ``moves``: accepted moves per
    image; ``beta``: bits per dB used.
    """

    u: np.ndarray
    pixels: np.ndarray
    bits: np.ndarray
    sse: np.ndarray
    start_bits: np.ndarray
    start_sse: np.ndarray
    moves: np.ndarray
    beta: float

    def cost(self) -> np.ndarray:
        """Each image's cost (module docstring) for the chosen symbols, float64 (N,)."""
        return cost(self.bits, self.sse, self.beta)

    def start_cost(self) -> np.ndarray:
        """Each image's cost for the rounded symbols it started from, float64 (N,)."""
        return cost(self.start_bits, self.start_sse, self.beta)


def default_beta(table: QualityTable) -> float:
    """Bits per dB for ``table``'s level: BETA_PER_BIT times its mean code length on the training
    set (codec.json ``train_bits_per_image``). InputError if the tables lack that figure."""
    if not table.train_bits_per_image > 0:
        raise InputError(f"quality {table.name!r} has no train_bits_per_image in its codec tables; "
                         "pass a Search with beta (bits per dB) to refine it")
    return BETA_PER_BIT * table.train_bits_per_image


def cost(bits: np.ndarray, sse: np.ndarray, beta: float) -> np.ndarray:
    """bits + beta * 10 log10(max(SSE, 1)), float64: the search's objective (module docstring)."""
    return np.asarray(bits, np.float64) + beta * 10 * np.log10(np.maximum(np.asarray(sse, np.float64), 1.0))


def squared_error(pixels: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Sum of squared pixel differences per image, int64 (N,), of uint8 (N, C, H, W) arrays."""
    diff = pixels.astype(np.int64) - images.astype(np.int64)
    return (diff * diff).reshape(len(diff), -1).sum(1)


def refine(model: EdgeVAE, table: QualityTable, images: np.ndarray, start: np.ndarray,
           search: Search = Search(), chunk: int = DEFAULT_CHUNK, progress: Progress | None = None) -> Refined:
    """Refine zigzag values ``start`` (N, D) (the rounded symbols, :meth:`QualityTable.symbols`)
    of uint8 ``images`` (N, C, H, W) at level ``table`` with ``model``'s decoder in the loop.

    Never returns symbols that cost more than ``start`` (a move is kept only if it lowers the
    cost), and never a symbol outside the level's range. ``chunk`` images are searched together;
    it changes speed, not the result.
    """
    images = model.check_images(images)
    start = np.asarray(start, dtype=np.int64)
    if not len(images):
        raise InputError("no images to refine")
    if start.shape != (len(images), model.latent_dim):
        raise InputError(f"start symbols must have shape ({len(images)}, {model.latent_dim}), got {start.shape}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise InputError(f"refine chunk must be an integer >= 1, got {chunk!r}")
    beta = float(search.beta) if search.beta is not None else default_beta(table)
    symbols = table.centers + unzigzag(start)
    if (start < 0).any() or (np.abs(symbols) > table.limits).any():
        raise InputError("start symbols are out of the level's range")
    deltas = [d for r in range(1, search.radius + 1) for d in (r, -r)]  # the tie order: +1, -1, +2, -2 ...
    parts = []
    for first in range(0, len(images), chunk):
        parts.append(_refine_chunk(model, table, images[first : first + chunk], symbols[first : first + chunk],
                                   search.passes, deltas, beta))
        if progress:
            progress(len(parts[-1][0]))
    k, pixels, bits, sse, start_bits, start_sse, moves = (np.concatenate(p) for p in zip(*parts))
    return Refined(u=zigzag(k - table.centers), pixels=pixels, bits=bits, sse=sse, start_bits=start_bits,
                   start_sse=start_sse, moves=moves, beta=beta)


def _bits(table: QualityTable, k: np.ndarray) -> np.ndarray:
    return table.bits(zigzag(k - table.centers))


def _refine_chunk(model: EdgeVAE, table: QualityTable, images: np.ndarray, k: np.ndarray, passes: int,
                  deltas: list[int], beta: float) -> tuple[np.ndarray, ...]:
    """Greedy coordinate descent for one chunk of images; symbols k (n, D) -> refined k and figures."""
    k = k.copy()
    pixels = model.decode(dequantize(k, table.steps))
    sse = squared_error(pixels, images)
    bits = _bits(table, k)
    start_bits, start_sse = bits.copy(), sse.copy()
    current = cost(bits, sse, beta)
    moves = np.zeros(len(k), dtype=np.int64)
    dim = k.shape[1]
    # Step t tries dimension t % dim. An image's state at step t is the one it had at step t - dim
    # unless it moved in between, and then the same candidates would be turned down again: so an
    # image is tried only while its last move (-1: the start) is at most dim steps back. Exactly
    # the decisions of trying every image at every step, for less decoding once images settle.
    last = np.full(len(k), -1, dtype=np.int64)
    for step in range(passes * dim):
        rows = np.flatnonzero(step - last <= dim)
        if not len(rows):
            break  # every image is at a local minimum: no later step would move one
        d = step % dim
        # Every candidate of every such image at dimension d: (len(deltas), len(rows), D).
        candidates = np.repeat(k[rows][None], len(deltas), axis=0)
        candidates[:, :, d] += np.array(deltas, dtype=np.int64)[:, None]
        valid = np.abs(candidates[:, :, d]) <= table.limits[d]
        flat = candidates[valid]
        if not len(flat):
            continue
        cand_pixels = model.decode(dequantize(flat, table.steps))
        owners = np.broadcast_to(rows[None], valid.shape)[valid]
        cand_sse = squared_error(cand_pixels, images[owners])
        cand_bits = _bits(table, flat)
        scores = np.full(valid.shape, np.inf)
        scores[valid] = cost(cand_bits, cand_sse, beta)
        best = np.argmin(scores, axis=0)  # the first of equal costs: a fixed order
        better = scores[best, np.arange(len(rows))] < current[rows]
        if not better.any():
            continue
        # Map each winning (delta, row) back to its position in the flat candidate list.
        position = np.cumsum(valid.ravel()).reshape(valid.shape) - 1
        chosen = position[best[better], np.flatnonzero(better)]
        winners = rows[better]
        k[winners] = flat[chosen]
        pixels[winners] = cand_pixels[chosen]
        sse[winners] = cand_sse[chosen]
        bits[winners] = cand_bits[chosen]
        current[winners] = scores[best[better], np.flatnonzero(better)]
        moves[winners] += 1
        last[winners] = step
    return k, pixels, bits, sse, start_bits, start_sse, moves
