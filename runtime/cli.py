"""``edgevae``: sample, encode, decode, reconstruct and interpolate images without PyTorch.

This module only parses arguments, calls :mod:`edgevae.runtime` and echoes results. Heavy
imports (numpy, onnxruntime) happen inside the commands so ``--help`` starts instantly.
Library errors become one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from typing import Any, Callable, Iterator, TypeVar

import click

from edgevae.runtime.clicommon import Group, echo, guard, write_stdout as _write_stdout

F = TypeVar("F", bound=Callable[..., Any])

OUT_HELP = ("Where to write: NAME.png writes the image itself (one image) or a grid of them (several), "
            "NAME.npy the uint8 array (N, C, H, W), anything else is a folder (created if needed) "
            "with one PNG per image; '-' writes that PNG to stdout (the summary then goes to stderr).")

#: The file name that means stdin (inputs) or stdout (outputs).
STDIO = "-"


#: Most ONNX Runtime threads --threads accepts: more threads than cores only compete, and
#: thousands take minutes just to start.
MAX_THREADS = 4 * (os.cpu_count() or 1)


MODEL_HELP = "Bundle folder (encoder.onnx, decoder.onnx, model.json) or the name of a shipped bundle"


class _ModelOption(click.Option):
    """--model, whose help names the shipped bundles and the command's default bundle as the
    package has them, read when the help is shown (not at import: every command would pay)."""

    def __init__(self, *args: Any, default_text: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_text = default_text

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from edgevae.runtime.bundle import shipped_bundles

        self.help = f"{MODEL_HELP} ({', '.join(shipped_bundles())}). Default: $EDGEVAE_MODEL, else {self.default_text()}."
        return super().get_help_record(ctx)


def _default_model() -> str:
    from edgevae.runtime.bundle import default_bundle_path

    return default_bundle_path().name


def _default_denoise_model() -> str:
    from edgevae.runtime.bundle import default_denoise_bundle_path

    return f"{default_denoise_bundle_path().name} (trained for denoising)"


def _default_codec_model() -> str:
    from edgevae.runtime.bundle import default_bundle_path, default_codec_bundle_path

    return f"{default_codec_bundle_path().name} (lossy) or {default_bundle_path().name} (--lossless)"


def _container_model() -> str:
    return "the shipped bundle that made each container (containers record its fingerprint)"


def _info_model() -> str:
    return f"{_default_model()}; for a CONTAINER, the shipped bundle that made it"


def model_options(fn: F | None = None, *, default: Callable[[], str] = _default_model) -> Any:
    """--model and --threads, shared by every command that loads a bundle; ``default()`` names the
    bundle the command uses without --model, for the help. ``@model_options`` or
    ``@model_options(default=...)``."""
    def decorate(fn: F) -> F:
        fn = click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
                          help=f"ONNX Runtime threads, 1..{MAX_THREADS} (4 per core; default: one per core).")(fn)
        return click.option("--model", "model_path", cls=_ModelOption, type=click.Path(), default=None,
                            envvar="EDGEVAE_MODEL", help=MODEL_HELP + ".", default_text=default)(fn)

    return decorate(fn) if fn is not None else decorate


FORCE = click.option("--force", is_flag=True, help="Overwrite existing output files.")
JSON_SUMMARY = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary.")
JSON_SIZES = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (count, bytes, bits per pixel).")


def output_options(fn: F) -> F:
    """-o/--out, --force and --json, shared by every command that writes images or arrays."""
    fn = JSON_SUMMARY(fn)
    fn = FORCE(fn)
    return click.option("-o", "--out", required=True, type=click.Path(), help=OUT_HELP)(fn)


RESIZE = click.option("--resize", is_flag=True,
                      help="Convert colour and resize + centre-crop inputs to the model's image shape "
                           "(default: refuse inputs of another shape).")


def _load(model_path: str | None, threads: int | None) -> Any:
    from edgevae.runtime.model import load

    return load(model_path, threads=threads)


def _report(as_json: bool, summary: dict[str, Any], text: str) -> None:
    """The command's summary on stdout, or on stderr when stdout carries the output itself."""
    echo(json.dumps(summary) if as_json else text, err=summary.get("outputs") == [STDIO])


def _write(images: Any, out: str, force: bool, names: list[str] | None = None) -> list[str]:
    """Write ``images`` to ``out`` (see OUT_HELP); '-' is one PNG on stdout."""
    from edgevae.runtime.outputs import picture_png, write_images

    if out == STDIO:
        _write_stdout(picture_png(images))
        return [STDIO]
    return [str(p) for p in write_images(images, out, names=names, force=force)]


def _describe_written(paths: list[str]) -> str:
    if paths == [STDIO]:
        return "stdout"
    if not paths:
        return "no files (nothing to write)"
    return paths[0] if len(paths) == 1 else f"{len(paths)} files in {paths[0].rsplit('/', 1)[0] if '/' in paths[0] else '.'}"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgevae")
def main() -> None:
    """Run an edgevae model (a VAE exported to ONNX) on the CPU, without PyTorch.

    \b
    Examples (the shipped Fashion-MNIST model is used unless --model is given):
      edgevae sample -n 64 --seed 1 -o samples.png      a grid of 64 new images
      edgevae reconstruct shirt.png -o recon/           encode and decode again
      edgevae interpolate a.png b.png --steps 8 -o ab.png
      edgevae encode images/ -o latents.npy             posterior means, float32 (N, D)
      edgevae decode latents.npy -o decoded/
      edgevae info                                      what the model is and how it was made
      edgevae compress shirt.png -o shirt.evz           about 20 bytes (lossy, --quality)
      edgevae decompress shirt.evz -o shirt-back.png
      edgevae info shirt.evz                            what a container holds, without decoding
      edgevae denoise noisy.png -o clean.png --sigma 50  remove Gaussian noise (std in pixel levels)
      edgevae score scans/ -o scores.csv                 bits/dim and novelty per image

    Outputs: NAME.png is the image (a grid if several), NAME.npy an array, anything else a folder of PNGs.
    Existing files are never overwritten without --force. Errors exit with code 2.
    """


@main.command()
@click.argument("container", required=False, type=click.Path())
@model_options(default=_info_model)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (or the container's description) as JSON.")
@guard
def info(container: str | None, model_path: str | None, threads: int | None, as_json: bool) -> None:
    """Describe the model bundle: shapes, training command, metrics, codec qualities.

    Given CONTAINER (an .evz file, '-' for stdin), describe it instead without decoding it:
    image count, sizes, quality, and whether it belongs to the model (checksum checked).
    """
    from edgevae.runtime.bundle import read_bundle

    if container is not None:
        _describe_container(container, model_path, as_json)
        return
    bundle = read_bundle(model_path)
    m = bundle.manifest
    if as_json:
        echo(json.dumps({"path": str(bundle.path), **m}, indent=2))
        return
    evaluation = m.get("evaluation") or {}
    lines = [
        f"model       {bundle.name} ({bundle.path})",
        f"images      {'x'.join(map(str, bundle.image_shape))} (C x H x W), uint8 0..255",
        f"latent      {bundle.latent_dim} dimensions, trained with the prior N(0, I)",
        "sampling    " + (f"learned prior ({bundle.prior_kind}, prior.onnx: {bundle.prior_noise_dim}-d noise -> "
                           f"latents), sample's default; --prior normal for N(0, I)"
                           if bundle.prior_kind else "N(0, I) (no learned prior in this bundle)"),
        f"likelihood  {m['likelihood']['kind']}, {bundle.components} component{'s' if bundle.components != 1 else ''}",
        f"precision   {bundle.precision}",
        f"trained by  {m.get('training', {}).get('command', 'unknown')}",
    ]
    if isinstance(m.get("novelty"), dict) and "threshold" in m["novelty"]:
        nov = m["novelty"]
        lines.append(f"novelty     threshold {nov['threshold']:.4f} for 'edgevae score' ({nov.get('percentile', 0):g}th "
                     f"percentile of {nov.get('images', '?')} training images)")
    if m.get("codec"):
        names = [f"{q} (default)" if q == m["codec"].get("default_quality") else q for q in m["codec"]["qualities"]]
        lines.append(f"codec       qualities {', '.join(names)}")
    from edgevae.runtime.tables import high_quality_levels

    high = high_quality_levels(bundle)
    if high:
        lines.append("high        qualities " + ", ".join(f"{q.name} (max error {q.max_error})" for q in high)
                     + ": near-lossless files")
    if model_path is None:
        from edgevae.runtime.bundle import describe_shipped

        lines.append(f"shipped     {describe_shipped()}; pick one with --model NAME")
    if evaluation:
        lines.append(
            f"test set    negative ELBO {evaluation['nelbo_bpd']:.3f} bits/dim, IWAE(k={evaluation['k']}) "
            f"{evaluation['iwae_bpd']:.3f} bits/dim, reconstruction PSNR {evaluation['psnr_db']:.2f} dB "
            f"({evaluation['images']} images)"
        )
    echo("\n".join(lines))


@main.command()
@click.option("-n", "count", type=click.IntRange(min=1), default=16, show_default=True, help="Number of images.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Noise seed; the same seed gives identical images. "
                                                     "Default: a random seed, printed with --json.")
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Scale of the prior noise: below 1 gives more typical, less varied images.")
@click.option("--prior", type=click.Choice(["learned", "normal"]), default=None,
              help="Where latents come from: 'learned' (the bundle's prior.onnx, fitted on its training latents: "
                   "images much closer to the data) or 'normal' (N(0, I), what the VAE was trained with). "
                   "Default: learned when the bundle has one ('edgevae info' says).")
@output_options
@model_options
@guard
def sample(count: int, seed: int | None, temperature: float, prior: str | None, out: str, force: bool,
           as_json: bool, model_path: str | None, threads: int | None) -> None:
    """Draw new images: decode latents from the bundle's learned prior, else from N(0, I)."""
    model = _load(model_path, threads)
    seed = secrets.randbits(31) if seed is None else seed
    prior = prior or model.prior
    paths = _write(model.sample(count, temperature=temperature, seed=seed, prior=prior), out, force)
    _report(as_json, {"command": "sample", "count": count, "seed": seed, "temperature": temperature,
                      "prior": prior, "outputs": paths},
            f"wrote {count} samples (seed {seed}, {prior} prior) to {_describe_written(paths)}")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@RESIZE
@output_options
@model_options
@guard
def reconstruct(inputs: tuple[str, ...], resize: bool, out: str, force: bool, as_json: bool,
                model_path: str | None, threads: int | None) -> None:
    """Encode INPUTS (image files, folders, .npy arrays) and decode them again."""
    from edgevae.runtime.images import psnr, read_images

    model = _load(model_path, threads)
    images, names = read_images(list(inputs), model.image_shape, resize=resize)
    recon = model.reconstruct(images)
    paths = _write(recon, out, force, names)
    psnr = float(psnr(images, recon).mean())
    _report(as_json, {"command": "reconstruct", "count": len(images), "mean_psnr_db": psnr, "outputs": paths},
            f"reconstructed {len(images)} image(s), mean PSNR {psnr:.2f} dB, to {_describe_written(paths)}")


@main.command()
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--steps", type=click.IntRange(min=2), default=8, show_default=True,
              help="Images in the blend, both ends included.")
@RESIZE
@output_options
@model_options
@guard
def interpolate(a: str, b: str, steps: int, resize: bool, out: str, force: bool, as_json: bool,
                model_path: str | None, threads: int | None) -> None:
    """Blend source image A into source image B through latent space."""
    from edgevae.runtime.errors import InputError
    from edgevae.runtime.images import read_images

    model = _load(model_path, threads)
    ends = []
    for source in (a, b):
        images, _ = read_images([source], model.image_shape, resize=resize)
        if len(images) != 1:
            raise InputError(f"{source}: holds {len(images)} images, interpolate needs exactly one per end")
        ends.append(images[0])
    paths = _write(model.interpolate(ends[0], ends[1], steps), out, force)
    _report(as_json, {"command": "interpolate", "count": steps, "outputs": paths},
            f"wrote {steps} interpolation steps to {_describe_written(paths)}")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(),
              help="A .npy file for the posterior means, float32 (N, D).")
@click.option("--logvar", "logvar_out", type=click.Path(), default=None,
              help="Also write the posterior log-variances, float32 (N, D), to this .npy file.")
@FORCE
@JSON_SUMMARY
@RESIZE
@model_options
@guard
def encode(inputs: tuple[str, ...], out: str, logvar_out: str | None, force: bool, as_json: bool, resize: bool,
           model_path: str | None, threads: int | None) -> None:
    """Encode INPUTS (image files, folders, .npy arrays) to latent vectors."""
    from edgevae.runtime.errors import OutputError
    from edgevae.runtime.images import read_images
    from edgevae.runtime.outputs import npy_bytes, write_files

    for target in (out, logvar_out):
        if target is not None and not target.lower().endswith(".npy"):
            raise OutputError(f"{target}: latents are written as .npy; give a name ending in .npy")
    model = _load(model_path, threads)
    images, names = read_images(list(inputs), model.image_shape, resize=resize)
    mean, logvar = model.encode(images)
    files = [(out, npy_bytes(mean))] + ([(logvar_out, npy_bytes(logvar))] if logvar_out else [])
    paths = [str(p) for p in write_files(files, force)]
    _report(as_json, {"command": "encode", "count": len(images), "latent_dim": model.latent_dim,
                      "names": names, "outputs": paths},
            f"encoded {len(images)} image(s) to {model.latent_dim}-d latents in {', '.join(paths)}")


@main.command()
@click.argument("latents", type=click.Path())
@output_options
@model_options
@guard
def decode(latents: str, out: str, force: bool, as_json: bool, model_path: str | None, threads: int | None) -> None:
    """Decode LATENTS (a .npy array (N, D) or (D,)) to images."""
    from pathlib import Path

    from edgevae.runtime.images import load_npy

    array = load_npy(Path(latents))
    model = _load(model_path, threads)
    images = model.decode(array)
    paths = _write(images, out, force)
    _report(as_json, {"command": "decode", "count": len(images), "outputs": paths},
            f"decoded {len(images)} latent(s) to {_describe_written(paths)}")


# -- codec ----------------------------------------------------------------------------------------

#: Batches at least this large show a progress bar on stderr.
PROGRESS_MIN_IMAGES = 2000

def _quality_help() -> str:
    from edgevae.runtime.quality import QUALITY_LEVELS, describe_levels

    from edgevae.runtime.bundle import default_codec_bundle_path, read_manifest
    from edgevae.runtime.errors import EdgeVAEError
    from edgevae.runtime.tables import high_quality_levels

    try:  # the shipped codec's levels above its lossy ones: data of its model.json
        high = high_quality_levels(read_manifest(default_codec_bundle_path()))
    except EdgeVAEError:
        high = ()
    above = (f" Above them, near-lossless levels (max error K): "
             f"{', '.join(f'{q.name} (K={q.max_error})' for q in high)}." if high else "")
    return (f"Quality level, smallest files first: {describe_levels()}; or its index 0..{len(QUALITY_LEVELS) - 1}."
            f"{above} A bundle may define its own levels: 'edgevae info' lists them.")


def _stdin_bytes() -> bytes:
    """All of stdin; InputError if it is closed or empty."""
    from edgevae.runtime.errors import InputError

    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise InputError("stdin: is closed, nothing to read ('-' reads stdin)")
    try:
        data = stream.read()
    except (OSError, ValueError) as e:
        raise InputError(f"stdin: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not data:
        raise InputError("stdin: is empty ('-' reads stdin)")
    return data


def _read_bytes(source: str) -> bytes:
    """The bytes of a file, or of stdin for '-'."""
    from pathlib import Path

    from edgevae.runtime.errors import InputError

    if source == STDIO:
        return _stdin_bytes()
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{source}: is a folder, expected a file") from None
    except OSError as e:
        raise InputError(f"{source}: cannot read ({e.strerror})") from None


def _gather(inputs: tuple[str, ...], image_shape: tuple[int, int, int], resize: bool) -> tuple[Any, list[str]]:
    """read_images over INPUTS, where '-' is an image file or .npy array read from stdin."""
    import numpy as np

    from edgevae.runtime.images import read_image_bytes, read_images

    if STDIO not in inputs:
        return read_images(list(inputs), image_shape, resize=resize)
    arrays, names = [], []
    for item in inputs:
        if item != STDIO:
            images, found = read_images([item], image_shape, resize=resize)
        else:
            images, found = read_image_bytes(_stdin_bytes(), "stdin", image_shape, resize=resize)
        arrays.append(images)
        names += found
    return np.concatenate(arrays), names


@contextlib.contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A click progress bar on stderr for long batches (``None`` for short ones, and when stderr is
    not a terminal: a script reading stderr then sees only the one-line error or nothing)."""
    if total < PROGRESS_MIN_IMAGES or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar.update


def _write_split(containers: list[bytes], folder: str, names: list[str], force: bool) -> list[str]:
    """One NAME.evz per image in ``folder``: all targets checked first, all or nothing."""
    from edgevae.runtime.container import SUFFIX
    from edgevae.runtime.outputs import write_folder

    return [str(p) for p in write_folder(folder, containers, names, SUFFIX, force)]


def _bits_per_pixel(total_bytes: int, count: int, image_shape: tuple[int, int, int]) -> float:
    c, h, w = image_shape
    return 8 * total_bytes / (count * c * h * w)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(),
              help="The .evz container to write ('-': stdout); with --split, a folder for one NAME.evz per image.")
@click.option("-q", "--quality", default=None, help=_quality_help())
@click.option("--split", is_flag=True, help="Write one single-image container per input image, keeping names.")
@click.option("--lossless", is_flag=True,
              help="Keep every pixel exactly (bits-back coding): about 3.2 bits/pixel instead of ~0.2; no --quality.")
@click.option("--max-error", "max_error", type=int, default=None, metavar="K",
              help="Near-lossless: every decoded pixel within K levels (1..32) of the input, guaranteed; "
                   "e.g. K=4 about 160 bytes per 28x28 image and 43 dB. No --quality or --lossless.")
@FORCE
@JSON_SIZES
@RESIZE
@model_options(default=_default_codec_model)
@guard
def compress(inputs: tuple[str, ...], out: str, quality: str | None, split: bool, lossless: bool,
             max_error: int | None, force: bool, as_json: bool, resize: bool, model_path: str | None,
             threads: int | None) -> None:
    """Compress INPUTS (image files, folders, .npy arrays; '-' reads stdin) to an .evz container.

    Lossy coding uses the shipped codec bundle (fashion-mnist-codec, trained for PSNR per byte),
    --lossless and --max-error the default model, unless --model or $EDGEVAE_MODEL names another.
    Qualities above the codec's lossy levels ('edgevae info' lists them) are near-lossless files
    with that level's maximum error.

    \b
    Examples:
      edgevae compress shirt.png -o shirt.evz                 one image, about 20 bytes
      edgevae compress photos/ -o all.evz --quality small     one container for a folder
      edgevae compress photos/ -o evz/ --split                evz/NAME.evz per image
      edgevae compress scans/ -o scans.evz --lossless         exact pixels back
      edgevae compress scans/ -o scans.evz --max-error 2      no pixel moves by more than 2
    """
    from pathlib import Path

    from edgevae.runtime.errors import InputError, OutputError
    from edgevae.runtime.outputs import atomic_write_bytes, check_target
    from edgevae.runtime.selection import open_codec

    if split and out == STDIO:
        raise OutputError("--split writes a folder of .evz files; it cannot write to stdout")
    if lossless and quality is not None:
        raise InputError("--quality does not apply to --lossless (lossless keeps every pixel)")
    if max_error is not None and (lossless or quality is not None):
        raise InputError(f"--max-error does not combine with {'--lossless' if lossless else '--quality'}: "
                         "choose one of --quality, --max-error K, --lossless")
    if not split and out != STDIO:  # fail before the work, not after it
        if Path(out).is_dir():
            raise OutputError(f"{out}: is a folder; pass --split to write one .evz per image into it")
        check_target(Path(out), force)
    if max_error is not None:
        from edgevae.runtime.nearlossless import check_max_error

        check_max_error(max_error)  # before any model is loaded
    mode = "lossless" if lossless else "near-lossless" if max_error is not None else "lossy"
    codec = open_codec(mode, model_path, threads, max_error=max_error)
    level, options = mode, {}
    if mode == "lossy":
        level = codec.level(quality).name
        options = {"quality": level}
    elif mode == "near-lossless":
        level = f"near-lossless (max error {max_error})"
    images, names = _gather(inputs, codec.model.image_shape, resize)
    with _progress(len(images), "compressing") as progress:
        if split:
            containers = codec.compress_each(images, progress=progress, **options)
        else:
            containers = [codec.compress(images, progress=progress, **options)]
    total = sum(len(c) for c in containers)
    if split:
        paths = _write_split(containers, out, names, force)
    elif out == STDIO:
        _write_stdout(containers[0])
        paths = [STDIO]
    else:
        paths = [str(atomic_write_bytes(out, containers[0], force))]
    bpp = _bits_per_pixel(total, len(images), codec.model.image_shape)
    summary = {"command": "compress", "count": len(images), "bytes": total, "bytes_per_image": total / len(images),
               "bits_per_pixel": bpp, "quality": level, "lossless": lossless, "max_error": max_error,
               "outputs": paths}
    how = "losslessly" if lossless else level if max_error is not None else f"at quality {level}"
    text = (f"compressed {len(images)} image(s) {how} to {_describe_written(paths)}: "
            f"{total} bytes, {total / len(images):.1f} bytes/image, {bpp:.3f} bits/pixel")
    echo(json.dumps(summary) if as_json else text, err=out == STDIO)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(),
              help=OUT_HELP)
@click.option("--index", "indices", type=click.IntRange(min=0), multiple=True,
              help="Decode only image N of the container (0-based, repeatable); needs a single input.")
@FORCE
@JSON_SIZES
@model_options(default=_container_model)
@guard
def decompress(inputs: tuple[str, ...], out: str, indices: tuple[int, ...], force: bool, as_json: bool,
               model_path: str | None, threads: int | None) -> None:
    """Decompress .evz containers (INPUTS; '-' reads stdin) to images.

    Without --model each container is decoded by the shipped bundle that made it (containers
    record their model's fingerprint). A damaged or truncated file, or one made by a model
    that is not given, is an error: nothing is written.
    """
    from pathlib import Path

    import numpy as np

    from edgevae.runtime.container import read_header
    from edgevae.runtime.errors import InputError
    from edgevae.runtime.selection import codec_for_container

    if indices and len(inputs) != 1:
        raise InputError("--index selects images of one container; give a single input")
    blobs = [_read_bytes(item) for item in inputs]
    cache: dict[str, Any] = {}
    codecs = [codec_for_container(blob, model_path, threads, cache) for blob in blobs]
    counts = [read_header(blob)[0].count for blob in blobs]
    model = codecs[0].model
    parts, names = [], []
    with _progress(len(indices) or sum(counts), "decompressing") as progress:
        for item, blob, stored, codec in zip(inputs, blobs, counts, codecs):
            images = codec.decompress(blob, indices=list(indices) or None, progress=progress)
            stem = "stdin" if item == STDIO else Path(item).stem
            chosen = list(indices) or list(range(len(images)))
            names += [stem] if stored == 1 else [f"{stem}-{i:04d}" for i in chosen]
            parts.append(images)
    images = np.concatenate(parts)
    paths = _write(images, out, force, names)
    total = sum(len(b) for b in blobs)
    summary = {"command": "decompress", "count": len(images), "bytes": total,
               "bits_per_pixel": _bits_per_pixel(total, sum(counts), model.image_shape), "outputs": paths}
    echo(json.dumps(summary) if as_json else
         f"decompressed {len(images)} image(s) from {total} bytes to {_describe_written(paths)}",
         err=out == STDIO)


def _describe_container(source: str, model_path: str | None, as_json: bool) -> None:
    """``edgevae info IN.evz``: the container's header, checked against the bundle that made it.

    Exit code 2 after the description when no bundle can vouch for the container.
    """
    from edgevae.runtime.errors import ContainerError
    from edgevae.runtime.selection import inspect_container, unvouched

    data = _read_bytes(source)
    info, bundle = inspect_container(data, model_path)
    if as_json:
        echo(json.dumps({"path": source, **info.to_dict(), "model": str(bundle.path) if bundle else None}))
    else:
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
        echo("\n".join(lines))
    if not info.vouched:
        raise unvouched(data) if bundle is None else ContainerError(
            f"container was made by another model than {bundle.name} (fingerprint {info.fingerprint_prefix}..) "
            "or is damaged; pass the bundle that made it with --model")


# -- applications ---------------------------------------------------------------------------------


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--noise", type=click.Choice(["gaussian", "salt-pepper"]), default="gaussian", show_default=True,
              help="What corrupted the images: additive Gaussian noise (rounded and clipped to 0..255), or "
                   "salt-and-pepper (pixels replaced by 0 or 255).")
@click.option("--sigma", type=float, default=None,
              help="Gaussian noise std in pixel levels (0..255 scale), e.g. 25. Default: estimated per image "
                   "(maximum likelihood under the model).")
@click.option("--amount", type=float, default=None,
              help="Salt-and-pepper: fraction of replaced pixels, e.g. 0.1. Default: estimated per image.")
@click.option("--refine", type=click.IntRange(min=0), default=0, show_default=True,
              help="Passes that re-encode the current estimate for a sharper model of the clean image: "
                   "worth ~0.5 dB with a bundle whose encoder never saw noise, nothing with the denoising "
                   "bundle; each costs one more encoder + decoder run.")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Average the posterior mean over this many latent draws (slower; 1 uses q's mean).")
@RESIZE
@output_options
@model_options(default=_default_denoise_model)
@guard
def denoise(inputs: tuple[str, ...], noise: str, sigma: float | None, amount: float | None, refine: int,
            samples: int, resize: bool, out: str, force: bool, as_json: bool, model_path: str | None, threads: int | None) -> None:
    """Remove noise from INPUTS (image files, folders, .npy arrays).

    Each pixel becomes its posterior mean given the noisy image: the model's distribution of the
    clean pixel combined with the noise model. Uses the shipped denoising bundle
    (fashion-mnist-denoise) unless --model or $EDGEVAE_MODEL names another.

    \b
    Examples:
      edgevae denoise noisy.png -o clean.png --sigma 25
      edgevae denoise scans/ -o cleaned/                       sigma estimated per image
      edgevae denoise dotted.png -o clean.png --noise salt-pepper
    """
    from edgevae.runtime.denoising import denoise_with_levels, noise_level
    from edgevae.runtime.selection import load_denoiser

    level = noise_level(noise, sigma, amount)  # a bad level fails before the model loads
    model = load_denoiser(model_path, threads)
    images, names = _gather(inputs, model.image_shape, resize)
    with _progress(len(images), "denoising") as progress:
        clean, used = denoise_with_levels(model, images, sigma=sigma, noise=noise, amount=amount, samples=samples,
                                          refine=refine, progress=progress)
    paths = _write(clean, out, force, names)
    what = "sigma" if noise == "gaussian" else "amount"
    how = f"{what} {level:g}" if level is not None else f"{what} estimated, median {float(_median(used)):.3g}"
    _report(as_json, {"command": "denoise", "count": len(images), "noise": noise, what: level,
                      "levels_used": [round(float(v), 4) for v in used], "model": str(model.bundle.path),
                      "outputs": paths},
            f"denoised {len(images)} image(s) ({noise}, {how}) to {_describe_written(paths)}")


def _median(values: Any) -> float:
    import numpy as np

    return float(np.median(values))


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(),
              help="CSV file to write (name,bits_per_dim,novelty, one row per image); '-' writes it to stdout.")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Posterior samples per image for the negative ELBO (Monte Carlo).")
@FORCE
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (count, threshold, flagged images).")
@RESIZE
@model_options
@guard
def score(inputs: tuple[str, ...], out: str, samples: int, force: bool, as_json: bool, resize: bool,
          model_path: str | None, threads: int | None) -> None:
    """Score INPUTS: how well the model explains each image, and how novel it is.

    \b
    bits_per_dim  the image's negative ELBO in bits per pixel (lower = more likely)
    novelty       bits_per_dim minus the bits per pixel of the image as a PNG file: raw
                  likelihood ranks simple images (flat, few strokes) as likely whatever the
                  model was trained on; novelty corrects for that. Higher = less like the
                  training data; above the bundle's threshold ('edgevae info') = flagged.

    \b
    Examples:
      edgevae score scans/ -o scores.csv
      edgevae score new.png -o - --json
    """
    from pathlib import Path

    from edgevae.runtime.novelty import csv_text, score as run
    from edgevae.runtime.outputs import atomic_write_bytes, check_target

    if out != STDIO:
        check_target(Path(out), force)  # fail before the work, not after it
    model = _load(model_path, threads)
    images, names = _gather(inputs, model.image_shape, resize)
    with _progress(len(images), "scoring") as progress:
        scores = run(model, images, samples=samples, progress=progress)
    text = csv_text(names, scores)
    if out == STDIO:
        _write_stdout(text.encode())
    else:
        atomic_write_bytes(out, text.encode(), force)
    flagged = scores.flagged
    flagged_names = [] if flagged is None else [n for n, f in zip(names, flagged) if f]
    summary = {"command": "score", "count": len(images), "model": str(model.bundle.path),
               "threshold": scores.threshold, "flagged": flagged_names, "outputs": [out]}
    verdict = ("no novelty threshold in this bundle" if scores.threshold is None else
               f"{len(flagged_names)} above the novelty threshold {scores.threshold:.3f}")
    echo(json.dumps(summary) if as_json else
         f"scored {len(images)} image(s) to {'stdout' if out == STDIO else out}: {verdict}", err=out == STDIO)
