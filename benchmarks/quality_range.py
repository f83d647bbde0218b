"""The whole quality range (issue 19): bytes per image against PSNR and maximum error, from about
20 dB to lossless, for edgevae's lossy, near-lossless and lossless modes and the classical codecs.

    python benchmarks/quality_range.py --limit 500           # a quick look (into runs/bench/rd-range/)
    python benchmarks/quality_range.py                       # all 10,000 test images
    python benchmarks/quality_range.py --update              # ... into benchmarks/results/ (tracked)

    # the two sides in two processes at the same time, then one report of both (nothing re-measured):
    python benchmarks/quality_range.py --classical-only --out runs/classical
    python benchmarks/quality_range.py --edgevae-only --out runs/edgevae
    python benchmarks/quality_range.py --baselines runs/classical/rd-range.json \
        --edgevae-from runs/edgevae/rd-range.json --update

Needs the Fashion-MNIST test set (``--data``, else $EDGEVAE_DATA, else Debian's
/usr/share/datasets/fashion-mnist), the training extras (for its reader and matplotlib) and the
``bench`` extra (``imagecodecs`` for JPEG-XL, AVIF and JPEG-LS; never a runtime dependency).
Writes rd-range.json (every number), rd-range.md (the tables) and rd-range.png (the plot) into
``--out`` (default runs/bench/rd-range/, untracked; benchmarks/outdir.py); only ``--update`` writes the tracked copies in
benchmarks/results/ and the plot docs/img/rd-range.png.

What is measured, always on the pixels that the codec's own decoder gives back:

- every codec in two arrangements: **one file per image** (each image its own complete file,
  headers included) and **one file of all images**: edgevae's one container; for the classical
  codecs all images tiled into one square mosaic (benchmarks/mosaic.py: 2800x2800 for 10,000
  images), saved as one picture, and cut back into tiles after decoding. A mosaic, not a
  multi-frame file: JPEG-XL's and AVIF's animation frames are coded one by one, so a mosaic is
  the classical codecs' best way to share context between images (and the same for every codec).
- per row: mean bytes per image, bits per pixel, mean PSNR over images (uint8, 10 log10(255^2 /
  MSE) from ``edgevae.runtime.images.psnr``, which counts an exact image as 148.1 dB: its MSE is
  floored at 1e-10), the PSNR of the mean MSE (the set's pixels as one signal, not inflated by exact
  images), the largest absolute error of any pixel, and the number of images decoded exactly.
- classical codecs: WebP (Pillow's libwebp, lossy quality sweep at method 4, Pillow's default, and
  lossless at method 6), JPEG (Pillow, ``optimize``), JPEG-XL (imagecodecs' libjxl, a distance
  sweep and lossless, effort 7: libjxl's own default), AVIF (imagecodecs' libavif with libaom,
  quality sweep, monochrome 4:0:0: imagecodecs codes a 1-channel array losslessly whatever the
  quality, so the gray image goes in as R=G=B with ``pixelformat=YUV400``, and the decoded
  channels are checked equal) and JPEG-LS (imagecodecs' CharLS, NEAR = 0, 1, 2, 4, 8, 16, 32).
- edgevae through its public API only: ``open_codec("lossy", model=...)`` at every name of
  ``codec.qualities`` for each lossy bundle, ``open_codec("near-lossless", max_error=K)``,
  ``open_codec("lossless")``; ``compress_each`` for the per-image files, ``compress`` for the one
  file, ``decompress`` of every file. A mode or option the installed code does not have is
  listed as missing (never estimated), and the rest still runs.
- equal PSNR: for each edgevae row between 24 and 40 dB, the bytes each classical codec needs
  for the same mean PSNR in the same arrangement, interpolated along its monotone curve
  (mosaic.bytes_at_psnr); outside the classical curve's PSNR range the table says "out of range".
- near-lossless: bytes against JPEG-LS with NEAR = K; images whose maximum error exceeds K, on the
  test set and on out-of-domain images (uniform noise, all black, all white, digits drawn with
  Pillow's ImageDraw), all at the bundle's image shape; encode and decode images/s with
  ``--threads`` onnxruntime threads (default 1), with the process's CPU seconds per wall second
  and ``os.getloadavg()`` before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import outdir
from mosaic import bytes_at_psnr, tile, untile  # benchmarks/mosaic.py, shared with rd.py and lossless.py
NAME = "rd-range"

#: Near-lossless maximum errors measured (the issue's bars cover 1..16; 32 is shown too).
MAX_ERRORS = (1, 2, 4, 8, 16, 32)
BAR_MAX_ERRORS = (1, 2, 4, 8, 16)
#: Issue 19's bars: edgevae bytes / classical bytes at equal PSNR between these PSNRs ...
BAR_PSNR_RANGE = (24.0, 40.0)
BARS_EQUAL_PSNR = {"WebP": 1 / 3, "JPEG-XL": 1 / 2}
#: ... near-lossless bytes / JPEG-LS NEAR=K bytes, per arrangement ...
BARS_JPEGLS = {"one-file": 0.5, "per-image": 0.7}
#: ... and near-lossless speed, images/s both ways on one core.
BAR_IMAGES_PER_S = 1000.0

ARRANGEMENTS = {"per-image": "one file per image", "one-file": "one file of all images"}
NEEDS_IMAGECODECS = "quality_range.py needs the imagecodecs package (JPEG-XL, AVIF, JPEG-LS): pip install -e '.[bench]'"


# -- classical codecs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A classical codec as data: its sweep and how one gray picture goes in and comes back.

    ``encode(picture (H, W) uint8, setting) -> file bytes``; ``decode(bytes) -> (H, W) uint8``.
    """

    name: str
    kind: str  # "lossy", "near-lossless" or "lossless": what the sweep is for
    setting_name: str
    settings: tuple[Any, ...]
    mosaic_settings: tuple[Any, ...]
    encode: Callable[[np.ndarray, Any], bytes]
    decode: Callable[[bytes], np.ndarray]
    library: str


def _pillow_encode(format_name: str, **fixed: Any) -> Callable[[np.ndarray, Any], bytes]:
    def encode(picture: np.ndarray, quality: Any) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(picture, mode="L").save(buffer, format=format_name, quality=quality, **fixed)
        return buffer.getvalue()

    return encode


def _pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        # WebP has no gray mode: libwebp codes the picture as colour (4:2:0) and gives RGB back,
        # whose channels differ by a level here and there; its luma is the gray picture (as rd.py).
        if image.mode not in ("L", "RGB"):
            raise SystemExit(f"Pillow decoded a gray {image.format} picture as mode {image.mode}")
        return np.asarray(image.convert("L"))


def _gray(decoded: np.ndarray, name: str) -> np.ndarray:
    """(H, W) from a decoder's output; a 3-channel output must be gray (R = G = B)."""
    if decoded.ndim == 3:
        if not ((decoded == decoded[..., :1]).all()):
            raise SystemExit(f"{name} decoded a gray picture to unequal channels")
        decoded = decoded[..., 0]
    if decoded.dtype != np.uint8:
        raise SystemExit(f"{name} decoded to {decoded.dtype}, not uint8")
    return decoded


def baselines() -> list[Baseline]:
    """The classical codecs measured; imagecodecs must be importable."""
    import imagecodecs as ic

    # One thread each: the same single core for every codec, and no fighting over a shared machine.
    def jxl(picture: np.ndarray, distance: Any) -> bytes:
        if distance == "lossless":
            return ic.jpegxl_encode(picture, lossless=True, effort=7, numthreads=1)
        return ic.jpegxl_encode(picture, distance=distance, effort=7, numthreads=1)

    def avif(picture: np.ndarray, quality: Any) -> bytes:
        rgb = np.repeat(picture[:, :, None], 3, axis=2)
        # Speed 6 (avifenc's default): imagecodecs' default was 10x slower here for sizes within 0.1%.
        return ic.avif_encode(rgb, level=quality, pixelformat=ic.AVIF.PIXEL_FORMAT.YUV400, speed=6, numthreads=1)

    webp_lossy = (0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
    jxl_lossy = (25.0, 15.0, 10.0, 7.0, 5.0, 3.5, 2.5, 1.8, 1.2, 0.8, 0.5, 0.3, 0.15)
    avif_lossy = (0, 15, 30, 45, 60, 75, 90)
    jpeg = (5, 10, 20, 30, 50, 70, 85, 95, 100)
    jpegls = (1, 2, 4, 8, 16, 32)
    return [
        Baseline("WebP", "lossy", "quality", webp_lossy, webp_lossy, _pillow_encode("WEBP"), _pillow_decode,
                 "Pillow"),
        Baseline("WebP lossless", "lossless", "method", (6,), (6,),
                 lambda p, m: _pillow_encode("WEBP", lossless=True, method=m)(p, 100), _pillow_decode, "Pillow"),
        Baseline("JPEG", "lossy", "quality", jpeg, jpeg, _pillow_encode("JPEG", optimize=True), _pillow_decode,
                 "Pillow"),
        Baseline("JPEG-XL", "lossy", "distance", jxl_lossy, jxl_lossy, jxl,
                 lambda d: _gray(ic.jpegxl_decode(d, numthreads=1), "JPEG-XL"), "imagecodecs"),
        Baseline("JPEG-XL lossless", "lossless", "distance", ("lossless",), ("lossless",), jxl,
                 lambda d: _gray(ic.jpegxl_decode(d, numthreads=1), "JPEG-XL"), "imagecodecs"),
        Baseline("AVIF", "lossy", "quality", avif_lossy, avif_lossy, avif,
                 lambda d: _gray(ic.avif_decode(d, numthreads=1), "AVIF"), "imagecodecs"),
        Baseline("JPEG-LS", "near-lossless", "NEAR", jpegls, jpegls, lambda p, near: ic.jpegls_encode(p, level=near),
                 lambda d: _gray(ic.jpegls_decode(d), "JPEG-LS"), "imagecodecs"),
        Baseline("JPEG-LS lossless", "lossless", "NEAR", (0,), (0,), lambda p, near: ic.jpegls_encode(p, level=near),
                 lambda d: _gray(ic.jpegls_decode(d), "JPEG-LS"), "imagecodecs"),
    ]


def measure(codec: str, setting: Any, arrangement: str, total_bytes: int, original: np.ndarray,
            decoded: np.ndarray, promise: int | None, **extra: Any) -> dict[str, Any]:
    """One row: sizes and errors of ``decoded`` against ``original`` (both uint8 (N, C, H, W)).

    ``promise``: the largest error the codec guarantees at this setting (K, or 0 for lossless),
    None for lossy; ``violations`` counts the images whose largest error exceeds it.
    """
    from edgevae.runtime.images import psnr

    if decoded.shape != original.shape or decoded.dtype != np.uint8:
        raise SystemExit(f"{codec} {setting}: decoded {decoded.shape} {decoded.dtype}, expected {original.shape} uint8")
    n = len(original)
    errors = np.abs(decoded.astype(np.int16) - original.astype(np.int16)).reshape(n, -1).max(1)
    per_image = original[0].size
    return {
        "codec": codec, "setting": setting, "arrangement": arrangement, **extra,
        "bytes_per_image": total_bytes / n, "bits_per_pixel": 8 * total_bytes / (n * per_image),
        "psnr_db": float(psnr(original, decoded).mean()),
        # The whole set as one signal: the mean MSE over images (all have the same pixel count).
        "psnr_mean_mse_db": float(psnr(original.reshape(1, -1), decoded.reshape(1, -1))[0]),
        "max_abs_error": int(errors.max()), "exact_images": int((errors == 0).sum()),
        "lossless": bool(errors.max() == 0), "promise": promise,
        "violations": None if promise is None else int((errors > promise).sum()),
    }


def promise(baseline: Baseline, setting: Any) -> int | None:
    """The largest error a classical codec guarantees at ``setting``."""
    return {"lossless": 0, "near-lossless": setting}.get(baseline.kind)


def classical_rows(baseline: Baseline, images: np.ndarray, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every setting of one classical codec, one file per image and one mosaic (gray images only)."""
    if images.shape[1] != 1:
        raise SystemExit("the classical codecs are measured on gray images (C = 1)")
    n, _, h, w = images.shape
    rows = []
    for setting in baseline.settings:
        started = time.perf_counter()
        files = [baseline.encode(image[0], setting) for image in images]
        decoded = np.stack([baseline.decode(f) for f in files])[:, None]
        rows.append(measure(baseline.name, setting, "per-image", sum(len(f) for f in files), images, decoded,
                            promise(baseline, setting), kind=baseline.kind, setting_name=baseline.setting_name, files=n,
                            library=baseline.library))
        log(f"  {baseline.name} {baseline.setting_name}={setting} per image: {rows[-1]['bytes_per_image']:.1f} B, "
            f"{rows[-1]['psnr_db']:.2f} dB, max error {rows[-1]['max_abs_error']} "
            f"({time.perf_counter() - started:.1f} s)")
    canvas, cols = tile(images)
    for setting in baseline.mosaic_settings:
        data = baseline.encode(canvas, setting)
        decoded = untile(baseline.decode(data), n, cols, h, w)
        rows.append(measure(baseline.name, setting, "one-file", len(data), images, decoded, promise(baseline, setting),
                            kind=baseline.kind, library=baseline.library,
                            setting_name=baseline.setting_name, files=1,
                            container=f"mosaic {canvas.shape[1]}x{canvas.shape[0]}"))
    return rows


# -- edgevae -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """One edgevae codec to open through the public API: ``open_codec(mode, **options)``."""

    mode: str
    options: dict[str, Any]
    setting_name: str
    setting: Any


def open_or_missing(ev: Any, mode: Mode, threads: int) -> tuple[Any, str | None]:
    """The codec, or None and why the installed code has no such mode or option (never a guess)."""
    accepted = inspect.signature(ev.open_codec).parameters
    unknown = [name for name in mode.options if name not in accepted]
    if unknown:
        return None, f"open_codec takes no {', '.join(unknown)} in the installed code"
    try:
        return ev.open_codec(mode.mode, threads=threads, **mode.options), None
    except ev.InputError as e:
        return None, str(e)


def edgevae_rows(codec: Any, images: np.ndarray, mode: Mode, quality: str | None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Per-image files and one file of all images: the rows, the failures and the timings.

    A codec error while coding or decoding (EdgeVAEError: a container that its own decoder
    refuses, say) is a failure of that arrangement, recorded with its message: all its images are
    lost to the user, so they all count against the promise. Timings: wall and CPU seconds of
    each step, and the 1-minute load average before and after.
    """
    from edgevae.runtime.errors import EdgeVAEError

    kwargs = {"quality": quality} if quality is not None else {}
    times: dict[str, Any] = {"load_before": os.getloadavg()[0]}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        times[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        return out

    def per_image() -> tuple[int, np.ndarray, dict[str, Any]]:
        singles = timed("compress_each", lambda: codec.compress_each(images, **kwargs))
        decoded = timed("decompress_each", lambda: np.concatenate([codec.decompress(s) for s in singles]))
        return sum(len(s) for s in singles), decoded, {"files": len(singles)}

    def one_file() -> tuple[int, np.ndarray, dict[str, Any]]:
        together = timed("compress", lambda: codec.compress(images, **kwargs))
        return len(together), timed("decompress", lambda: codec.decompress(together)), {"files": 1, "container": ".evz"}

    setting = quality if quality is not None else mode.setting
    common = {"mode": mode.mode, "bundle": codec.model.bundle.name, "setting_name": mode.setting_name,
              "promise": {"near-lossless": mode.setting, "lossless": 0}.get(mode.mode)}
    rows, failures = [], []
    for arrangement, code in (("per-image", per_image), ("one-file", one_file)):
        try:
            size, decoded, extra = code()
        except EdgeVAEError as e:
            failures.append({"codec": "edgevae", "setting": setting, "arrangement": arrangement, **common,
                             "images": len(images), "error": f"{type(e).__name__}: {e}"})
            continue
        rows.append(measure("edgevae", setting, arrangement, size, images, decoded, **extra, **common))
    times["load_after"] = os.getloadavg()[0]
    return rows, failures, times


def lossy_bundles(ev: Any, named: list[str] | None) -> list[str | None]:
    """The lossy bundles to measure: those named, else the mode's default (None) and every other
    shipped bundle trained for lossy coding (its manifest's training has a distortion term)."""
    if named:
        return list(named)
    from edgevae.runtime.bundle import read_manifest, shipped_bundles
    from edgevae.runtime.selection import default_bundle_for

    default = default_bundle_for("lossy").resolve()
    out: list[str | None] = [None]
    for name, folder in shipped_bundles().items():
        manifest = read_manifest(folder).manifest
        sigma = ((manifest.get("training") or {}).get("train_config") or {}).get("distortion_sigma") or 0
        if folder.resolve() != default and manifest.get("codec") and sigma > 0:
            out.append(name)
    return out


def out_of_domain(shape: tuple[int, int, int], count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Images unlike Fashion-MNIST at ``shape`` (C, H, W), uint8 (N, C, H, W) per set."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    digits = np.zeros((count, c, h, w), np.uint8)
    for i in range(count):
        # A digit in Pillow's built-in scalable font (no font files needed), MNIST style: light on
        # black, its size and place varied; every channel the same.
        font = ImageFont.load_default(size=max(6, int(h * rng.uniform(0.55, 0.95))))
        picture = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(picture)
        text = str(rng.integers(10))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = (w - (right - left)) / 2 - left + rng.integers(-w // 8, w // 8 + 1)
        y = (h - (bottom - top)) / 2 - top + rng.integers(-h // 8, h // 8 + 1)
        draw.text((x, y), text, fill=int(rng.integers(160, 256)), font=font)
        digits[i] = np.asarray(picture)[None]
    return {
        "uniform noise": rng.integers(0, 256, (count, c, h, w), dtype=np.uint8),
        "all black": np.zeros((max(2, count // 20), c, h, w), np.uint8),
        "all white": np.full((max(2, count // 20), c, h, w), 255, np.uint8),
        "digits (ImageDraw)": digits,
    }


# -- comparisons ---------------------------------------------------------------------------------


def _curve(rows: list[dict[str, Any]], name: str, arrangement: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["codec"] == name and r["arrangement"] == arrangement]


def equal_psnr(edgevae: list[dict[str, Any]], classical: list[dict[str, Any]], default_bundles: set[str]) -> list[dict[str, Any]]:
    """For each edgevae lossy or near-lossless row within BAR_PSNR_RANGE: each classical lossy
    codec's bytes at the same mean PSNR in the same arrangement, and the ratio."""
    low, high = BAR_PSNR_RANGE
    names = sorted({r["codec"] for r in classical if r["kind"] == "lossy"})
    out = []
    for e in edgevae:
        if e["mode"] == "lossless" or not low <= e["psnr_db"] <= high:
            continue
        for name in names:
            curve = _curve(classical, name, e["arrangement"])
            other, how = bytes_at_psnr(curve, e["psnr_db"])
            ratio = e["bytes_per_image"] / other if how == "interpolated" else None
            bar = BARS_EQUAL_PSNR.get(name) if e["bundle"] in default_bundles else None
            out.append({"mode": e["mode"], "bundle": e["bundle"], "setting": e["setting"],
                        "arrangement": e["arrangement"], "edgevae_bytes": e["bytes_per_image"],
                        "psnr_db": e["psnr_db"], "codec": name,
                        "codec_bytes": other if how == "interpolated" else None, "how": how,
                        "codec_psnr_range": [min(r["psnr_db"] for r in curve), max(r["psnr_db"] for r in curve)],
                        "ratio": ratio, "bar": bar,
                        "met": (ratio <= bar) if bar is not None and ratio is not None else None})
    return out


def versus_jpegls(edgevae: list[dict[str, Any]], classical: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Near-lossless K against JPEG-LS NEAR=K, per arrangement."""
    out = []
    for e in edgevae:
        if e["mode"] != "near-lossless":
            continue
        match = [r for r in classical if r["codec"] == "JPEG-LS" and r["setting"] == e["setting"]
                 and r["arrangement"] == e["arrangement"]]
        if not match:
            continue
        ratio = e["bytes_per_image"] / match[0]["bytes_per_image"]
        bar = BARS_JPEGLS[e["arrangement"]] if e["setting"] in BAR_MAX_ERRORS else None
        out.append({"max_error": e["setting"], "arrangement": e["arrangement"], "bundle": e["bundle"],
                    "edgevae_bytes": e["bytes_per_image"], "edgevae_psnr_db": e["psnr_db"],
                    "jpegls_bytes": match[0]["bytes_per_image"], "jpegls_psnr_db": match[0]["psnr_db"],
                    "ratio": ratio, "bar": bar, "met": (ratio <= bar) if bar is not None else None})
    return out


# -- the run -------------------------------------------------------------------------------------


def edgevae_modes(ev: Any, bundles: list[str | None], threads: int) -> tuple[list[tuple[Mode, Any]], list[dict[str, Any]]]:
    """Every edgevae codec to measure, opened; and the rows the installed code cannot give."""
    opened: list[tuple[Mode, Any]] = []
    missing: list[dict[str, Any]] = []
    wanted = [Mode("lossy", {"model": b} if b else {}, "quality", None) for b in bundles]
    wanted += [Mode("near-lossless", {"max_error": k}, "max_error", k) for k in MAX_ERRORS]
    wanted.append(Mode("lossless", {}, "", "lossless"))
    for mode in wanted:
        codec, why = open_or_missing(ev, mode, threads)
        if codec is None:
            label = f"edgevae {mode.mode}" + "".join(f" {k}={v}" for k, v in mode.options.items())
            missing.append({"rows": label, "reason": why})
        else:
            opened.append((mode, codec))
    return opened, missing


#: The parts of a result that the edgevae measurements make (what --edgevae-from reuses).
EDGEVAE_PARTS = ("edgevae", "missing", "failures", "max_error_out_of_domain", "out_of_domain_sets", "speed",
                 "default_lossy_bundle", "threads")


def measure_edgevae(images: np.ndarray, models: list[str] | None, threads: int, ood_count: int,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Every edgevae mode on ``images`` and on the out-of-domain sets: the EDGEVAE_PARTS of a result."""
    import edgevae.runtime as ev

    opened, missing = edgevae_modes(ev, lossy_bundles(ev, models), threads)
    for m in missing:
        log(f"MISSING: {m['rows']}: {m['reason']}")
    edgevae: list[dict[str, Any]] = []
    speed: list[dict[str, Any]] = []
    ood_sets = out_of_domain(tuple(images.shape[1:]), ood_count)
    ood: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for mode, codec in opened:
        qualities = list(codec.qualities) if mode.mode == "lossy" else [None]
        for quality in qualities:
            rows, failed, times = edgevae_rows(codec, images, mode, quality)
            edgevae += rows
            failures += [dict(f, set="test set") for f in failed]
            log(f"edgevae {mode.mode} {codec.model.bundle.name} {quality or mode.setting}: "
                + "; ".join(f"{ARRANGEMENTS[r['arrangement']]} {r['bytes_per_image']:.1f} B, {r['psnr_db']:.2f} dB, "
                            f"max error {r['max_abs_error']}" for r in rows)
                + "".join(f"; {ARRANGEMENTS[f['arrangement']]} FAILED: {f['error']}" for f in failed))
            if mode.mode == "near-lossless":
                speed.append({"max_error": mode.setting, "bundle": codec.model.bundle.name, "images": len(images),
                              "threads": threads, **times})
        if mode.mode in ("near-lossless", "lossless"):
            for set_name, set_images in ood_sets.items():
                rows, failed, _ = edgevae_rows(codec, set_images, mode, None)
                failures += [dict(f, set=set_name) for f in failed]
                ood += [{"mode": mode.mode, "max_error": r["promise"], "set": set_name, "images": len(set_images),
                         "arrangement": r["arrangement"], "bytes_per_image": r["bytes_per_image"],
                         "max_abs_error": r["max_abs_error"], "violations": r["violations"]} for r in rows]
                # A file its own decoder refuses gives none of its images back: all count against the promise.
                ood += [{"mode": mode.mode, "max_error": f["promise"], "set": set_name, "images": len(set_images),
                         "arrangement": f["arrangement"], "bytes_per_image": None, "max_abs_error": None,
                         "violations": len(set_images), "error": f["error"]} for f in failed]
                for f in failed:
                    log(f"edgevae {mode.mode} {mode.setting} on {set_name}, {ARRANGEMENTS[f['arrangement']]}: "
                        f"FAILED: {f['error']}")
    default_lossy = next((c.model.bundle.name for mode, c in opened if mode.mode == "lossy" and not mode.options), None)
    return {"edgevae": edgevae, "missing": missing, "failures": failures, "max_error_out_of_domain": ood,
            "out_of_domain_sets": {k: len(v) for k, v in ood_sets.items()}, "speed": speed,
            "default_lossy_bundle": default_lossy, "threads": threads}


def run(images: np.ndarray, *, models: list[str] | None = None, threads: int = 1, ood_count: int = 200,
        classical_from: dict[str, Any] | None = None, edgevae_from: dict[str, Any] | None = None,
        classical: bool = True, edgevae: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement on ``images`` (uint8 (N, 1, H, W)); the result as plain data (see main).

    ``classical_from`` / ``edgevae_from``: earlier results on the same images (checked by hash)
    whose classical rows / edgevae parts are taken as they are instead of measured again;
    ``classical`` / ``edgevae`` False leave that side out (its rows empty).
    """
    started = time.perf_counter()
    sha = hashlib.sha256(images.tobytes()).hexdigest()
    for name, earlier in (("classical", classical_from), ("edgevae", edgevae_from)):
        if earlier is not None and earlier.get("data_sha256") != sha:
            raise SystemExit(f"the earlier result whose {name} rows were to be reused was measured on other images")
    result: dict[str, Any] = {"images": len(images), "image_shape": list(images.shape[1:]), "data_sha256": sha,
                              "versions": versions()}
    if classical_from is not None:
        rows = classical_from["classical"]
        log(f"classical codecs: {len(rows)} rows reused from a run on the same images")
    else:
        rows = []
        for baseline in baselines() if classical else []:
            log(f"{baseline.name} ...")
            rows += classical_rows(baseline, images, log)
    result["classical"] = rows
    if edgevae_from is not None:
        result.update({k: edgevae_from[k] for k in EDGEVAE_PARTS})
        log(f"edgevae: {len(result['edgevae'])} rows reused from a run on the same images")
    elif edgevae:
        result.update(measure_edgevae(images, models, threads, ood_count, log))
    else:
        result.update({"edgevae": [], "missing": [], "failures": [], "max_error_out_of_domain": [],
                       "out_of_domain_sets": {}, "speed": [], "default_lossy_bundle": None, "threads": threads})
    assemble(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def assemble(result: dict[str, Any]) -> None:
    """The comparisons and bars, from the rows of both sides (in place)."""
    edgevae, classical, failures = result["edgevae"], result["classical"], result["failures"]
    test_violations = [{"codec": r["codec"], "mode": r.get("mode", r.get("kind")), "max_error": r["promise"],
                        "arrangement": r["arrangement"], "max_abs_error": r["max_abs_error"],
                        "violations": r["violations"]} for r in edgevae + classical if r["promise"] is not None]
    test_violations += [{"codec": "edgevae", "mode": f["mode"], "max_error": f["promise"],
                         "arrangement": f["arrangement"], "max_abs_error": None, "violations": f["images"],
                         "error": f["error"]} for f in failures if f["set"] == "test set" and f["promise"] is not None]
    default_lossy = result["default_lossy_bundle"]
    defaults = {b for b in (default_lossy,) if b} | {r["bundle"] for r in edgevae if r["mode"] == "near-lossless"}
    result.update({
        "equal_psnr": equal_psnr(edgevae, classical, defaults),
        "versus_jpegls": versus_jpegls(edgevae, classical),
        "max_error_test_set": test_violations,
    })
    result["bars"] = bars(result)


def bars(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 19's bars, each with what was measured; ``met`` None when nothing was measured."""
    out = []
    near = [v for v in result["max_error_test_set"] if v["codec"] == "edgevae" and v["mode"] == "near-lossless"]
    ood = [v for v in result["max_error_out_of_domain"] if v["mode"] == "near-lossless"]
    out.append({"bar": "near-lossless: 0 images with max error > K (test set and out-of-domain)",
                "measured": f"{sum(v['violations'] for v in near)} on the test set, "
                            f"{sum(v['violations'] for v in ood)} out of domain"
                            + (f" (of which {sum(v['violations'] for v in near + ood if 'error' in v)} in "
                               f"{sum('error' in v for v in near + ood)} file(s) that failed to decode)"
                               if any("error" in v for v in near + ood) else "") if near else "not available",
                "met": (sum(v["violations"] for v in near + ood) == 0) if near else None})
    for arrangement, bar in BARS_JPEGLS.items():
        rows = [v for v in result["versus_jpegls"] if v["arrangement"] == arrangement and v["bar"] is not None]
        worst = max(rows, key=lambda v: v["ratio"]) if rows else None
        out.append({"bar": f"near-lossless K=1..16, {ARRANGEMENTS[arrangement]}: bytes <= {bar}x JPEG-LS NEAR=K",
                    "measured": ", ".join(f"K={v['max_error']} {v['ratio']:.2f}x" for v in rows) or "not available",
                    "met": all(v["met"] for v in rows) if rows else None,
                    "worst": worst and {"max_error": worst["max_error"], "ratio": worst["ratio"]}})
    default = [r["psnr_db"] for r in result["edgevae"] if r["mode"] == "lossy"
               and r["bundle"] == result["default_lossy_bundle"] and r["arrangement"] == "per-image"]
    span = f" (its lossy levels span {min(default):.2f}-{max(default):.2f} dB)" if default else ""
    for codec, bar in BARS_EQUAL_PSNR.items():
        for arrangement in ARRANGEMENTS:
            rows = [v for v in result["equal_psnr"] if v["codec"] == codec and v["arrangement"] == arrangement
                    and v["bar"] is not None]
            rated = [v for v in rows if v["ratio"] is not None]
            out.append({"bar": f"default codec 24-40 dB, {ARRANGEMENTS[arrangement]}: bytes <= 1/{1 / bar:.0f} "
                               f"{codec} at equal PSNR",
                        "measured": ", ".join(f"{'K=' if v['mode'] == 'near-lossless' else ''}{v['setting']} "
                                              f"{v['psnr_db']:.1f} dB 1/{1 / v['ratio']:.1f}"
                                              for v in rated) + span
                                    if rated else "no point of the default codec in 24-40 dB" + span,
                        "met": all(v["met"] for v in rated) if rated else None,
                        "points": len(rated), "out_of_range": len(rows) - len(rated)})
    for direction in ("compress", "decompress"):
        rows = [v for v in result["speed"] if direction in v]
        # One core: images per CPU second of the process (the codec may run lanes in parallel
        # threads, so images per wall second can count more than one core).
        rates = [v["images"] / v[direction]["cpu_s"] for v in rows]
        out.append({"bar": f"near-lossless {direction} (one file) >= {BAR_IMAGES_PER_S:.0f} images/s on one core "
                           "(images per CPU second)",
                    "measured": ", ".join(f"K={v['max_error']} {r:,.0f}/s" for v, r in zip(rows, rates))
                    or "not available",
                    "met": (min(rates) >= BAR_IMAGES_PER_S) if rates else None})
    return out


def versions() -> dict[str, str]:
    """Library versions of every codec measured."""
    from PIL import features

    out = {"Pillow": metadata.version("Pillow"), "libwebp": str(features.version("webp")),
           "onnxruntime": metadata.version("onnxruntime"), "numpy": np.__version__,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"}
    try:
        import imagecodecs as ic

        out.update({"imagecodecs": ic.__version__, "libjxl": ic.jpegxl_version(), "libavif": ic.avif_version(),
                    "charls": ic.jpegls_version()})
    except ImportError:
        pass
    return out


# -- report --------------------------------------------------------------------------------------


def label(row: dict[str, Any]) -> str:
    """A row's codec as the tables and the plot name it."""
    if row["codec"] != "edgevae":
        return row["codec"]
    return f"edgevae {row['mode']} ({row['bundle']})"


def _setting(row: dict[str, Any]) -> str:
    lossy_level = row["codec"] == "edgevae" and row["mode"] == "lossy"
    return str(row["setting"]) if lossy_level or not row["setting_name"] else f"{row['setting_name']} {row['setting']}"


def _psnr(value: float, lossless: bool) -> str:
    return "exact" if lossless else f"{value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    """The tables of rd-range.md."""
    v = result["versions"]
    lines = [f"Made by `{result['command']}` in {result['seconds']} s.", ""]
    for name, earlier in (result.get("reused") or {}).items():
        lines += [f"The {name} rows were measured by `{earlier['command']}` ({earlier['seconds']} s, the same "
                  "images) and are reused here.", ""]
    lines += [f"Fashion-MNIST test set, {result['images']} images of {result['image_shape']}; {v['machine']}; "
              f"Pillow {v['Pillow']} (libwebp {v['libwebp']}), imagecodecs {v.get('imagecodecs', '-')} "
              f"({v.get('libjxl', '-')}, libavif {v.get('libavif', '-')}, {v.get('charls', '-')}); "
              f"edgevae with {result['threads']} onnxruntime thread(s).", ""]
    if result["missing"]:
        lines += ["**Missing rows** (the installed code has no such mode or option; nothing was estimated):", ""]
        lines += [f"- {m['rows']}: {m['reason']}" for m in result["missing"]] + [""]
    if result["failures"]:
        lines += ["**Failures** (the codec raised while coding or decoding its own file; no row, and every image of "
                  "that file counts as a violation of its promise):", ""]
        lines += [f"- edgevae {f['mode']} ({f['bundle']}) {f['setting_name']} {f['setting']}, {f['set']} "
                  f"({f['images']} images), {ARRANGEMENTS[f['arrangement']]}: {f['error']}" for f in result["failures"]]
        lines += [""]
    for arrangement, title in ARRANGEMENTS.items():
        what = ("each image its own complete file, headers included" if arrangement == "per-image" else
                "edgevae: one .evz container; classical codecs: one mosaic picture of all images")
        lines += [f"**{title[0].upper() + title[1:]}** ({what}). Mean PSNR over images (an exact image counts "
                  "148.1 dB); PSNR of the mean MSE; largest error of any pixel; images decoded exactly.", "",
                  "| codec | setting | bytes/image | bits/pixel | mean PSNR (dB) | PSNR of mean MSE (dB) | max error | exact images |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in result["edgevae"] + result["classical"]:
            if r["arrangement"] == arrangement:
                lines.append(f"| {label(r)} | {_setting(r)} | {r['bytes_per_image']:.1f} | {r['bits_per_pixel']:.3f} | "
                             f"{_psnr(r['psnr_db'], r['lossless'])} | {_psnr(r['psnr_mean_mse_db'], r['lossless'])} | "
                             f"{r['max_abs_error']} | {r['exact_images']} |")
        lines.append("")
    lines += [f"**Equal PSNR, {BAR_PSNR_RANGE[0]:.0f}-{BAR_PSNR_RANGE[1]:.0f} dB**: each edgevae point's bytes against "
              "the classical codec's bytes at the same mean PSNR, same arrangement (interpolated along its monotone "
              "curve; never extrapolated). Bars for the default codec: <= 1/3 WebP, <= 1/2 JPEG-XL.", "",
              "| edgevae | setting | arrangement | PSNR (dB) | bytes | codec | its bytes | ratio | bar | met |",
              "|---|---|---|---:|---:|---|---:|---:|---|---|"]
    for c in result["equal_psnr"]:
        lo, hi = c["codec_psnr_range"]
        its = f"{c['codec_bytes']:.1f}" if c["ratio"] is not None else f"out of range ({lo:.1f}-{hi:.1f} dB)"
        ratio = f"{c['ratio']:.3f} (1/{1 / c['ratio']:.1f})" if c["ratio"] is not None else "-"
        bar = f"<= 1/{1 / c['bar']:.0f}" if c["bar"] is not None else "-"
        met = "-" if c["met"] is None else ("yes" if c["met"] else "no")
        lines.append(f"| {c['mode']} ({c['bundle']}) | {c['setting']} | {ARRANGEMENTS[c['arrangement']]} | "
                     f"{c['psnr_db']:.2f} | {c['edgevae_bytes']:.1f} | {c['codec']} | {its} | {ratio} | {bar} | {met} |")
    if not result["equal_psnr"]:
        lines.append("| (no edgevae point between 24 and 40 dB) | | | | | | | | | |")
    lines += ["", "**Near-lossless against JPEG-LS with NEAR = K** (bars: one file <= 0.5x, per-image files <= 0.7x, "
              "K = 1..16)", "",
              "| K | arrangement | edgevae bytes | edgevae PSNR | JPEG-LS bytes | JPEG-LS PSNR | ratio | bar | met |",
              "|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for c in result["versus_jpegls"]:
        met = "-" if c["met"] is None else ("yes" if c["met"] else "no")
        lines.append(f"| {c['max_error']} | {ARRANGEMENTS[c['arrangement']]} | {c['edgevae_bytes']:.1f} | "
                     f"{c['edgevae_psnr_db']:.2f} | {c['jpegls_bytes']:.1f} | {c['jpegls_psnr_db']:.2f} | "
                     f"{c['ratio']:.3f} | {'<= ' + str(c['bar']) + 'x' if c['bar'] else '-'} | {met} |")
    if not result["versus_jpegls"]:
        lines.append("| (edgevae near-lossless not available) | | | | | | | | |")
    lines += ["", "**Maximum error guarantees**: images whose largest pixel error exceeds the promise (K for "
              "near-lossless, 0 for lossless)", "",
              "| codec | mode | promise | images | arrangement | max error | violations |", "|---|---|---:|---|---|---:|---:|"]
    for c in result["max_error_test_set"]:
        lines.append(f"| {c['codec']} | {c['mode']} | {c['max_error']} | test set | {ARRANGEMENTS[c['arrangement']]} | "
                     f"{'FAILED' if 'error' in c else c['max_abs_error']} | {c['violations']} |")
    for c in result["max_error_out_of_domain"]:
        size = "file not decodable" if "error" in c else f"{c['bytes_per_image']:.0f} B/image"
        lines.append(f"| edgevae | {c['mode']} | {c['max_error']} | {c['set']} ({c['images']}; {size}) | "
                     f"{ARRANGEMENTS[c['arrangement']]} | {'FAILED' if 'error' in c else c['max_abs_error']} | "
                     f"{c['violations']} |")
    lines += ["", "**Near-lossless speed** (the test set above, one call each): images per wall second, images per "
              "CPU second of the process (= on one core), and CPU/wall (cores busy on average: the codec may run "
              "parallel lanes whatever the onnxruntime threads)", "",
              "| K | onnxruntime threads | compress (one file) | decompress (one file) | compress_each | "
              "decompress each file | load before / after |", "|---:|---:|---:|---:|---:|---:|---|"]
    for s in result["speed"]:
        cells = [f"{s['images'] / s[k]['wall_s']:,.0f}/s wall, {s['images'] / s[k]['cpu_s']:,.0f}/s CPU "
                 f"({s[k]['cpu_s'] / s[k]['wall_s']:.2f})" if k in s
                 else "failed" for k in ("compress", "decompress", "compress_each", "decompress_each")]
        lines.append(f"| {s['max_error']} | {s['threads']} | {' | '.join(cells)} | "
                     f"{s['load_before']:.2f} / {s['load_after']:.2f} |")
    if not result["speed"]:
        lines.append("| (edgevae near-lossless not available) | | | | | | |")
    lines += ["", "**Issue 19's bars**", "", "| bar | measured | met |", "|---|---|---|"]
    for b in result["bars"]:
        lines.append(f"| {b['bar']} | {b['measured']} | {'-' if b['met'] is None else ('yes' if b['met'] else 'NO')} |")
    return "\n".join(lines) + "\n"


#: Plot colours per codec family (edgevae's lossy bundles take the blues in turn).
COLORS = {"WebP": "tab:green", "JPEG": "tab:orange", "JPEG-XL": "tab:red", "AVIF": "tab:brown", "JPEG-LS": "tab:gray",
          "near-lossless": "tab:purple", "lossless": "black"}
BLUES = ("tab:blue", "tab:cyan", "navy", "steelblue")


def plot(result: dict[str, Any], path: Path) -> None:
    """Mean PSNR against mean bytes per image (log scale), every codec; lossless points in a band on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = result["edgevae"] + result["classical"]
    finite = [r["psnr_db"] for r in rows if not r["lossless"]]
    top = max(finite) + 3  # where the lossless points sit: above every finite PSNR
    fig, ax = plt.subplots(figsize=(11, 6.5))
    bundles = sorted({r["bundle"] for r in result["edgevae"] if r["mode"] == "lossy"},
                     key=lambda b: b != result["default_lossy_bundle"])
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((label(r), r["arrangement"]), []).append(r)
    legend: dict[str, Line2D] = {}
    for (name, arrangement), group in groups.items():
        first = group[0]
        if first["codec"] == "edgevae":
            color = BLUES[bundles.index(first["bundle"]) % len(BLUES)] if first["mode"] == "lossy" else COLORS[first["mode"]]
        else:
            color = COLORS[first["codec"].split(" ")[0]]
        edgevae = first["codec"] == "edgevae"
        marker = "D" if edgevae else "o"
        lossy = sorted((r for r in group if not r["lossless"]), key=lambda r: r["bytes_per_image"])
        if lossy:
            ax.plot([r["bytes_per_image"] for r in lossy], [r["psnr_db"] for r in lossy],
                    "-" if arrangement == "per-image" else "--", marker=marker, color=color, ms=3.5,
                    lw=2 if edgevae else 1.1)
            legend.setdefault(name, Line2D([], [], color=color, marker=marker, ms=4, lw=2 if edgevae else 1.1,
                                           label=name))
        for r in group:
            if r["lossless"]:
                ax.plot(r["bytes_per_image"], top, "*" if arrangement == "per-image" else "P", color=color, ms=11,
                        mfc=color if arrangement == "per-image" else "none")
                if all(h.get_color() != color for h in legend.values()):  # "WebP lossless" shares WebP's entry
                    legend[name] = Line2D([], [], color=color, marker="*", ls="", ms=9, label=name)
        if edgevae and first["arrangement"] == "per-image" and first["mode"] != "lossless" and \
                (first["mode"] != "lossy" or first["bundle"] == result["default_lossy_bundle"]):
            for i, r in enumerate(lossy):
                ax.annotate(str(r["setting"]), (r["bytes_per_image"], r["psnr_db"]), textcoords="offset points",
                            xytext=(5, -10 if i % 2 else 3), fontsize=6, color=color)
    ax.axhline(top - 1.5, color="black", lw=0.6)
    ax.annotate("lossless (exact pixels)", (0.01, top), xycoords=("axes fraction", "data"), fontsize=8, va="center")
    ax.axhspan(*BAR_PSNR_RANGE, color="gold", alpha=0.08, lw=0)
    ax.set_xscale("log")
    ax.set_ylim(min(finite) - 1, top + 2)
    ax.set_xlabel("mean bytes per image (log scale)")
    ax.set_ylabel("mean PSNR (dB)")
    ax.set_title(f"Fashion-MNIST test set ({result['images']:,} images, {'x'.join(map(str, result['image_shape'][1:]))}): "
                 "bytes against PSNR from ~20 dB to lossless", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    styles = [Line2D([], [], color="k", ls="-", label="one file per image"),
              Line2D([], [], color="k", ls="--", label="one file of all images (classical: a mosaic)"),
              Line2D([], [], color="k", marker="*", ls="", ms=9, label="lossless, one file per image"),
              Line2D([], [], color="k", marker="P", mfc="none", ls="", ms=9, label="lossless, one file of all"),
              Line2D([], [], color="gold", alpha=0.3, lw=8, label="24-40 dB (issue 19's bars)")]
    ax.legend(handles=list(legend.values()) + styles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write(result: dict[str, Any], out: Path) -> list[Path]:
    """rd-range.json, rd-range.md and rd-range.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{NAME}.json", out / f"{NAME}.md", out / f"{NAME}.png"]
    paths[0].write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    paths[1].write_text(markdown(result))
    plot(result, paths[2])
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="Folder with the Fashion-MNIST IDX files.")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N test images.")
    parser.add_argument("--model", action="append", default=None,
                        help="Lossy bundle to measure (repeat for several; default: the lossy default and every other "
                             "shipped bundle trained for lossy coding). Near-lossless and lossless use their mode's default.")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for edgevae (default 1: one core).")
    parser.add_argument("--ood", type=int, default=200, help="Noise and digit images per out-of-domain set.")
    parser.add_argument("--baselines", default=None,
                        help="Reuse the classical rows of an earlier rd-range.json made on the same images.")
    parser.add_argument("--edgevae-from", default=None,
                        help="Reuse the edgevae rows of an earlier rd-range.json made on the same images.")
    parser.add_argument("--classical-only", action="store_true",
                        help="Measure the classical codecs alone (for --baselines of a later run).")
    parser.add_argument("--edgevae-only", action="store_true",
                        help="Measure edgevae alone (for --edgevae-from of a later run).")
    outdir.add_options(parser, NAME)
    args = parser.parse_args()
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        print(NEEDS_IMAGECODECS, file=sys.stderr)
        return 2
    out = outdir.folder(args, NAME)  # before the work: a bad --out fails at once
    earlier = {name: json.loads(Path(path).read_text()) if path else None
               for name, path in (("classical", args.baselines), ("edgevae", args.edgevae_from))}

    from edgevae.training.data import load_fashion_mnist

    images = load_fashion_mnist(args.data).test[: args.limit]
    result = run(images, models=args.model, threads=args.threads, ood_count=args.ood,
                 classical_from=earlier["classical"], edgevae_from=earlier["edgevae"],
                 classical=not args.edgevae_only, edgevae=not args.classical_only, log=lambda s: print(s, flush=True))
    result["command"] = "python benchmarks/quality_range.py " + " ".join(sys.argv[1:])
    result["reused"] = {name: {"command": e.get("command"), "seconds": e.get("seconds")}
                        for name, e in earlier.items() if e is not None}
    paths = write(result, out)
    pictures = outdir.picture_folder(args, NAME)
    if pictures != out:  # README shows the plot: --update puts a copy in docs/img/
        shutil.copyfile(paths[2], pictures / paths[2].name)
        paths.append(pictures / paths[2].name)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
