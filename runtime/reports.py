"""What the ``edgevae`` commands report: each command's summary (JSON fields + one line of text),
``edgevae info``'s description of a bundle or a container, and the help texts read from bundles.

A summary is a :data:`Summary`: the dict ``--json`` prints and the line printed otherwise; its
``outputs`` list holds ``-`` when the command's output went to stdout (the summary then belongs on
stderr, see :func:`edgevae.runtime.clicommon.report`). Reading a manifest's records (training, evaluation, novelty,
codec) for people happens here and nowhere else in the runtime.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from edgevae.runtime import contract
from edgevae.runtime.bundle import Bundle, default_codec_bundle_path, describe_shipped, read_manifest
from edgevae.runtime.errors import EdgeVAEError
from edgevae.runtime.inputs import STDIO
from edgevae.runtime.quality import QUALITY_LEVELS, describe_levels
from edgevae.runtime.tables import high_quality_levels
from edgevae.runtime.units import bits_per_pixel

if TYPE_CHECKING:  # the codec and the model load onnxruntime, which --help must not pay for
    from edgevae.runtime.codec import ContainerInfo
    from edgevae.runtime.novelty import Scores

#: (JSON summary, one line of text).
Summary = tuple[dict[str, Any], str]


def describe_written(paths: Sequence[str]) -> str:
    """Where outputs went, for a summary line: ``stdout``, a file, or ``N files in FOLDER``."""
    if list(paths) == [STDIO]:
        return "stdout"
    if not paths:
        return "no files (nothing to write)"
    return paths[0] if len(paths) == 1 else f"{len(paths)} files in {paths[0].rsplit('/', 1)[0] if '/' in paths[0] else '.'}"


# -- the model commands -----------------------------------------------------------------------------


def sample(count: int, seed: int, temperature: float, prior: str, paths: list[str]) -> Summary:
    """``edgevae sample``: images drawn, the seed that repeats them, the prior used."""
    return ({"command": "sample", "count": count, "seed": seed, "temperature": temperature, "prior": prior,
             "outputs": paths},
            f"wrote {count} samples (seed {seed}, {prior} prior) to {describe_written(paths)}")


def reconstruct(images: np.ndarray, recon: np.ndarray, paths: list[str]) -> Summary:
    """``edgevae reconstruct``: count and mean PSNR (dB) of uint8 (N, C, H, W) ``recon`` against ``images``."""
    from edgevae.runtime.images import psnr

    mean = float(psnr(images, recon).mean())
    return ({"command": "reconstruct", "count": len(images), "mean_psnr_db": mean, "outputs": paths},
            f"reconstructed {len(images)} image(s), mean PSNR {mean:.2f} dB, to {describe_written(paths)}")


def interpolate(steps: int, paths: list[str]) -> Summary:
    """``edgevae interpolate``: the steps written."""
    return ({"command": "interpolate", "count": steps, "outputs": paths},
            f"wrote {steps} interpolation steps to {describe_written(paths)}")


def encode(count: int, latent_dim: int, names: list[str], paths: list[str]) -> Summary:
    """``edgevae encode``: images encoded, the latent size, each image's name in row order."""
    return ({"command": "encode", "count": count, "latent_dim": latent_dim, "names": names, "outputs": paths},
            f"encoded {count} image(s) to {latent_dim}-d latents in {', '.join(paths)}")


def decode(count: int, paths: list[str]) -> Summary:
    """``edgevae decode``: latents decoded."""
    return ({"command": "decode", "count": count, "outputs": paths},
            f"decoded {count} latent(s) to {describe_written(paths)}")


# -- the codec commands -----------------------------------------------------------------------------


def compress(containers: Sequence[bytes], count: int, image_shape: tuple[int, int, int], mode: str,
             quality: str | None, max_error: int | None, paths: list[str]) -> Summary:
    """``edgevae compress``: bytes written for ``count`` images of ``image_shape`` in ``mode``
    (``lossy`` at the level named ``quality``, ``lossless``, ``near-lossless`` with ``max_error``)."""
    level = {"lossy": quality, "near-lossless": f"near-lossless (max error {max_error})"}.get(mode, mode)
    total = sum(len(c) for c in containers)
    bpp = bits_per_pixel(total, count, image_shape)
    lossless = mode == "lossless"
    how = "losslessly" if lossless else level if max_error is not None else f"at quality {level}"
    return ({"command": "compress", "count": count, "bytes": total, "bytes_per_image": total / count,
             "bits_per_pixel": bpp, "quality": level, "lossless": lossless, "max_error": max_error,
             "outputs": paths},
            f"compressed {count} image(s) {how} to {describe_written(paths)}: "
            f"{total} bytes, {total / count:.1f} bytes/image, {bpp:.3f} bits/pixel")


def decompress(blobs: Sequence[bytes], stored: int, decoded: int, image_shape: tuple[int, int, int],
               paths: list[str]) -> Summary:
    """``edgevae decompress``: ``decoded`` images from containers ``blobs`` that hold ``stored``
    images of ``image_shape`` (bits per pixel count every stored image)."""
    total = sum(len(b) for b in blobs)
    return ({"command": "decompress", "count": decoded, "bytes": total,
             "bits_per_pixel": bits_per_pixel(total, stored, image_shape), "outputs": paths},
            f"decompressed {decoded} image(s) from {total} bytes to {describe_written(paths)}")


def quality_help() -> str:
    """compress's ``--quality`` help: the standard levels, and the shipped codec's near-lossless
    levels above them (data of its model.json; left out if that bundle cannot be read)."""
    try:
        high = high_quality_levels(read_manifest(default_codec_bundle_path()))
    except EdgeVAEError:
        high = ()
    above = (f" Above them, near-lossless levels (max error K): "
             f"{', '.join(f'{q.name} (K={q.max_error})' for q in high)}." if high else "")
    return (f"Quality level, smallest files first: {describe_levels()}; or its index 0..{len(QUALITY_LEVELS) - 1}."
            f"{above} A bundle may define its own levels: 'edgevae info' lists them.")


# -- the applications -------------------------------------------------------------------------------


def denoise(count: int, noise: str, level: float | None, used: np.ndarray, model: str, paths: list[str]) -> Summary:
    """``edgevae denoise``: the noise level given (``level``) or estimated per image (``used``)."""
    what = "sigma" if noise == "gaussian" else "amount"
    how = f"{what} {level:g}" if level is not None else f"{what} estimated, median {float(np.median(used)):.3g}"
    return ({"command": "denoise", "count": count, "noise": noise, what: level,
             "levels_used": [round(float(v), 4) for v in used], "model": model, "outputs": paths},
            f"denoised {count} image(s) ({noise}, {how}) to {describe_written(paths)}")


def score(names: list[str], scores: Scores, model: str, out: str) -> Summary:
    """``edgevae score``: the images above the bundle's novelty threshold, by name."""
    flagged = [] if scores.flagged is None else [n for n, f in zip(names, scores.flagged) if f]
    verdict = ("no novelty threshold in this bundle" if scores.threshold is None else
               f"{len(flagged)} above the novelty threshold {scores.threshold:.3f}")
    return ({"command": "score", "count": len(names), "model": model, "threshold": scores.threshold,
             "flagged": flagged, "outputs": [out]},
            f"scored {len(names)} image(s) to {'stdout' if out == STDIO else out}: {verdict}")


# -- edgevae info ---------------------------------------------------------------------------------


def bundle_json(bundle: Bundle) -> str:
    """``edgevae info --json``: the bundle's path and its manifest, indented."""
    return json.dumps({"path": str(bundle.path), **bundle.manifest}, indent=2)


def bundle_text(bundle: Bundle, note_shipped: bool) -> str:
    """``edgevae info``: shapes, sampling prior, likelihood, precision, how the bundle was trained,
    novelty threshold, codec qualities and test-set figures; ``note_shipped`` adds the list of
    shipped bundles (for the bundle used without --model)."""
    m = bundle.manifest
    evaluation = m.get("evaluation") or {}
    lines = [
        f"model       {bundle.name} ({bundle.path})",
        f"images      {'x'.join(map(str, bundle.image_shape))} (C x H x W), uint8 0..255",
        f"latent      {bundle.latent_dim} dimensions, trained with the prior N(0, I)",
        "sampling    " + (f"learned prior ({bundle.prior_kind}, prior.onnx: {bundle.prior_noise_dim}-d noise -> "
                           f"latents), sample's default; --prior normal for N(0, I)"
                           if bundle.prior_kind else "N(0, I) (no learned prior in this bundle)"),
        f"likelihood  {m['likelihood']['kind']}, {bundle.components} component{'s' if bundle.components != 1 else ''}"
        + (f"; lossless files code pixels in {bundle.pixel_groups} groups (tile "
           f"{contract.tile_text(bundle.pixel_tile)}), each after the first refined by "
           "context.onnx from the groups before it (lossless only)" if bundle.pixel_groups > 1 else ""),
        f"precision   {bundle.precision}" + (", integer arithmetic (lossless files use the exact tables: any engine "
                                             "decodes them)" if bundle.arithmetic == "integer" else ""),
        f"trained by  {m.get('training', {}).get('command', 'unknown')}",
    ]
    if isinstance(m.get("novelty"), dict) and "threshold" in m["novelty"]:
        nov = m["novelty"]
        lines.append(f"novelty     threshold {nov['threshold']:.4f} for 'edgevae score' ({nov.get('percentile', 0):g}th "
                     f"percentile of {nov.get('images', '?')} training images)")
    if m.get("codec"):
        names = [f"{q} (default)" if q == m["codec"].get("default_quality") else q for q in m["codec"]["qualities"]]
        lines.append(f"codec       qualities {', '.join(names)}")
    high = high_quality_levels(bundle)
    if high:
        lines.append("high        qualities " + ", ".join(f"{q.name} (max error {q.max_error})" for q in high)
                     + ": near-lossless files")
    if note_shipped:
        lines.append(f"shipped     {describe_shipped()}; pick one with --model NAME")
    if evaluation:
        lines.append(
            f"test set    negative ELBO {evaluation['nelbo_bpd']:.3f} bits/dim, IWAE(k={evaluation['k']}) "
            f"{evaluation['iwae_bpd']:.3f} bits/dim, reconstruction PSNR {evaluation['psnr_db']:.2f} dB "
            f"({evaluation['images']} images)"
        )
    return "\n".join(lines)


def container_json(source: str, info: ContainerInfo, bundle: Bundle | None) -> str:
    """``edgevae info IN.evz --json``: the container's description and the bundle that vouched for it."""
    return json.dumps({"path": source, **info.to_dict(), "model": str(bundle.path) if bundle else None})


def container_text(source: str, info: ContainerInfo, bundle: Bundle | None) -> str:
    """``edgevae info IN.evz``: images, sizes, format and mode, and whether ``bundle`` (the one that
    made it, if any was found) vouches for it."""
    quality = f"{info.quality_index}" + (f" ({info.quality})" if info.quality else "")
    quality = "" if info.mode == "lossless" else f", quality {quality}"
    if info.max_error is not None:  # near-lossless: K, and (single images) the latent's lossy level
        quality = f", max error {info.max_error} (every pixel within {info.max_error} levels)" + (
            f", latent at lossy level {info.quality_index - 1}" + (f" ({info.quality})" if info.quality else "")
            if info.quality_index else ", bits-back")
    lines = [
        f"container   {source}: {info.count} image(s), {info.bytes} bytes"
        + (f", {info.bits_per_pixel:.3f} bits/pixel" if info.bits_per_pixel is not None else ""),
        f"format      edgevae container version {info.version}, {info.mode}{quality}",
        f"payload     {info.payload_bytes} bytes entropy-coded + {info.overhead_bytes} bytes of header, "
        f"lengths and checksum",
    ]
    if bundle is None:
        lines.append(f"model       fingerprint {info.fingerprint_prefix}.. (no shipped bundle made it)")
    elif info.model_matches:
        shape = "x".join(map(str, info.image_shape or ()))
        lines.append(f"model       {bundle.name} ({bundle.path}): fingerprint matches, checksum ok")
        lines.append(f"images      {shape} (C x H x W)")
    else:
        lines.append(f"model       not {bundle.name}: fingerprint {info.fingerprint_prefix}.., "
                     f"{bundle.name} is {bundle.fingerprint.hex()[0]}..")
    return "\n".join(lines)
