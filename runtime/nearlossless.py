"""Near-lossless coding: every decoded pixel lies within K levels of the input, by construction.

    encode:  pixels --bitsback.binning(K)--> bins of at most 2K + 1 levels
             several images: bits-back over the bins (runtime/bitsback.py; the posterior sees the
                 bins' representatives, which the decoder knows before it returns the bits)
             one image: its latent quantized at one of the bundle's lossy levels (codec.json;
                 range coded, runtime/rangecode.py), the level that gives the fewest bytes,
                 then bins centred on the model's prediction (bitsback.pixel_bins) under
                 p(. | that latent) (ANS, no bits back)
    decode:  bins + the decoder's likelihood p(v|z) at the decoded latent
             --> pixel = round(clamp(E[v | v in bin, z], hi - K, lo + K)), or the end level 0 / 255
                 of an end bin that holds at least half the bin's mass

Why the bound holds whatever the input and whatever the model predicts: a bin [lo, hi] has at
most 2K + 1 levels, so hi - K <= lo + K, and every integer in [hi - K, lo + K] is within K of
every level of the bin. The model only decides where inside that interval the pixel lands:
at the conditional mean of its likelihood within the bin (not the bin's centre), which is
where most pixels sit. The end bins [0, K] and [255 - K, 255] contain 0 and 255 in their
feasible intervals; there the end level is chosen when it holds at least half the bin's mass
(the conditional median), so black and white backgrounds come back exact when the model
predicts them.

Payload of a near-lossless container (mode 2; docs/FORMAT.md §8): quality nibble 0, a bits-back
payload exactly as lossless (§7) over the bins; quality nibble q >= 1 (one image): a varint L,
L bytes of the latent's range-coded payload at lossy level q - 1 (§3), then a 16-bit check and
the ANS words of the bins (the top word's zero high bytes dropped).

Reconstruction uses float math (runtime/likelihood.py) on the decoder's outputs: another
machine may put a pixel one level elsewhere, never outside the bound (the clamp is integer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from edgevae.runtime import bitsback
from edgevae.runtime import container as fmt
from edgevae.runtime.container import decode_varint, encode_varint
from edgevae.runtime.errors import ContainerError, InputError
from edgevae.runtime.likelihood import MixtureIndices, interval_moments
from edgevae.runtime.rangecode import decode_payloads, encode_payloads

if TYPE_CHECKING:
    from edgevae.runtime.likelihood import MixtureParams
    from edgevae.runtime.model import EdgeVAE
    from edgevae.runtime.tables import CodecTables

Progress = Callable[[int], None]

#: Images per network call when coding single images (never changes the bytes).
BATCH = 128


def check_max_error(value: object) -> int:
    """``value`` as a maximum error K in 1..MAX_ERROR; InputError otherwise (one line)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= fmt.MAX_ERROR:
        raise InputError(f"max error must be an integer from 1 to {fmt.MAX_ERROR} (pixel levels), got {value!r}")
    return int(value)


def reconstruct(lower: np.ndarray, upper: np.ndarray, max_error: int, params: MixtureParams | MixtureIndices) -> np.ndarray:
    """Pixels uint8 (B, C, H, W) of bins [lower, upper] (integer levels, (B, P), at most
    2 max_error + 1 levels each) under the likelihood ``params`` (B images): each pixel within
    ``max_error`` of every level of its bin (the module docstring says why). An integer bundle's
    ``params`` (MixtureIndices) are reconstructed with integers only (bitsback.exact_reconstruct)."""
    if isinstance(params, MixtureIndices):
        shape = params.mean_index.shape[:1] + params.mean_index.shape[2:]
        lo = np.asarray(lower).reshape(shape[0], -1)
        hi = np.asarray(upper).reshape(shape[0], -1)
        return bitsback.exact_reconstruct(lo, hi, max_error, params).reshape(shape)
    shape = params.means.shape[:1] + params.means.shape[2:]
    lo, hi = lower.reshape(shape).astype(np.int64), upper.reshape(shape).astype(np.int64)
    k = max_error
    mean, end_share = interval_moments(lo, hi, params)
    # In the end bins, the end level itself when it holds at least half the bin's mass (it is then
    # the median): black and white backgrounds come back exact instead of a level or two off.
    end = np.where(lo == 0, 0, bitsback.LEVELS - 1)
    value = np.where(end_share >= 0.5, end, mean)
    # The clamp comes last: whatever the estimate, the pixel is within k of the whole bin, and a
    # level. Both matter: the estimate of a bin the model gives almost no mass can sit at its
    # edge, 255.5, and near the top lo + k passes 255 (255.5 rounded to 256 was cast to 0).
    return np.rint(np.clip(value, np.maximum(hi - k, 0), np.minimum(lo + k, bitsback.LEVELS - 1))).astype(np.uint8)


def _likelihood(model: EdgeVAE, latents: np.ndarray) -> MixtureParams | MixtureIndices:
    """The decoder's mixture at a lossy level's latents: an integer bundle's indices (the decoder
    input floor(z * 256 + 0.5), z the exact dequantized latent), else the float parameters."""
    if getattr(model, "integer", False):
        return model.likelihood_indices(model.latent_indices(latents))
    return model.likelihood(latents)


def encode_many(model: EdgeVAE, images: np.ndarray, max_error: int, progress: Progress | None = None) -> bytes:
    """One bits-back payload (level 0) of every image (N, C, H, W)."""
    return bitsback.encode(model, images, progress, bins=bitsback.binning(max_error)).payload


def encode_single(model: EdgeVAE, tables: CodecTables | None, images: np.ndarray, max_error: int,
                  progress: Progress | None = None) -> list[tuple[int, bytes]]:
    """(level nibble, payload) of each image (N, C, H, W) as a single-image container.

    With codec tables: every lossy level's latent is tried and the shortest payload kept
    (nibble = level index + 1). Without (or when the bundle has more than 15 levels, which
    the nibble cannot name): a one-image bits-back payload (nibble 0).
    """
    usable = [] if tables is None else [q for q in tables.qualities if q.index < fmt.MAX_QUALITY_INDEX]
    out: list[tuple[int, bytes]] = []
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH]
        if not usable:
            out += [(0, encode_many(model, image[None], max_error)) for image in batch]
        else:
            means = model.encode(batch)[0]
            best: list[tuple[int, bytes] | None] = [None] * len(batch)
            for table in usable:
                latents = table.latents(table.symbols(means)[1])  # exactly what the decoder rebuilds
                heads = encode_payloads(table, means)
                tails = bitsback.encode_known(_likelihood(model, latents), batch, max_error)
                for i, (head, tail) in enumerate(zip(heads, tails)):
                    payload = encode_varint(len(head)) + head + tail
                    if best[i] is None or len(payload) < len(best[i][1]):  # type: ignore[index]
                        best[i] = (table.index + 1, payload)
            out += best  # type: ignore[arg-type]
        if progress:
            progress(len(batch))
    return out


def decode(model: EdgeVAE, tables: CodecTables | None, header: fmt.Header, payload: bytes,
           progress: Progress | None = None) -> np.ndarray:
    """The images uint8 (count, C, H, W) of a near-lossless container's payload (header parsed and
    its CRC verified by the caller). ContainerError if the payload is damaged."""
    bins = bitsback.binning(header.max_error)
    if header.quality == 0:
        out = np.empty((header.count, *model.image_shape), dtype=np.uint8)

        def keep(indices: list[int], symbols: np.ndarray, params: MixtureParams) -> None:
            j = symbols.astype(np.int64)
            out[indices] = reconstruct(bins.starts[j], bins.ends[j], bins.max_error, params)

        bitsback.decode(model, payload, header.count, progress, bins=bins, on_decoded=keep)
        return out
    if tables is None or header.quality - 1 >= len(tables.qualities):
        raise ContainerError(f"container is damaged (latent level {header.quality - 1} unknown to this model)")
    table = tables.qualities[header.quality - 1]
    data = bytes(payload)
    length, pos = decode_varint(data, 0, len(data), "latent length")
    if pos + length > len(data):
        raise ContainerError("container is damaged or truncated (latent longer than the payload)")
    latents = decode_payloads(table, [data[pos : pos + length]])
    params = _likelihood(model, latents)
    lower, upper = bitsback.decode_known(params, [data[pos + length :]], header.max_error)
    if progress:
        progress(1)
    return reconstruct(lower, upper, header.max_error, params)
