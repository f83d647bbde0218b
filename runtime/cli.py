"""``edgevae``: sample, encode, decode, reconstruct and interpolate images without PyTorch.

This module only parses arguments, calls :mod:`edgevae.runtime` and echoes results. Heavy
imports (numpy, onnxruntime) happen inside the commands so ``--help`` starts instantly.
Library errors become one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import secrets
import sys
from typing import Any, Callable, TypeVar

import click

from edgevae.runtime.errors import EdgeVAEError

F = TypeVar("F", bound=Callable[..., Any])

OUT_HELP = ("Where to write: NAME.png writes one grid picture, NAME.npy the uint8 array (N, C, H, W), "
            "anything else is a folder (created if needed) with one PNG per image.")


def guard(fn: F) -> F:
    """Run a command; turn expected failures into ``Error: ...`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeVAEError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except MemoryError:
            click.echo("Error: out of memory; process fewer images at a time", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def model_options(fn: F) -> F:
    """--model and --threads, shared by every command that loads a bundle."""
    fn = click.option("--threads", type=click.IntRange(min=1), default=None,
                      help="ONNX Runtime threads (default: one per core).")(fn)
    fn = click.option("--model", "model_path", type=click.Path(), default=None, envvar="EDGEVAE_MODEL",
                      help="Bundle folder (encoder.onnx, decoder.onnx, model.json). "
                           "Default: $EDGEVAE_MODEL, else the shipped Fashion-MNIST model.")(fn)
    return fn


def output_options(fn: F) -> F:
    """-o/--out, --force and --json, shared by every command that writes images or arrays."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary.")(fn)
    fn = click.option("--force", is_flag=True, help="Overwrite existing output files.")(fn)
    fn = click.option("-o", "--out", required=True, type=click.Path(), help=OUT_HELP)(fn)
    return fn


RESIZE = click.option("--resize", is_flag=True,
                      help="Convert colour and resize + centre-crop inputs to the model's image shape "
                           "(default: refuse inputs of another shape).")


def _load(model_path: str | None, threads: int | None) -> Any:
    from edgevae.runtime.model import load

    return load(model_path, threads=threads)


def _report(as_json: bool, summary: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(summary) if as_json else text)


def _write(images: Any, out: str, force: bool, names: list[str] | None = None) -> list[str]:
    from edgevae.runtime.outputs import write_images

    return [str(p) for p in write_images(images, out, names=names, force=force)]


def _describe_written(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{len(paths)} files in {paths[0].rsplit('/', 1)[0] if '/' in paths[0] else '.'}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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

    Outputs: NAME.png is a grid, NAME.npy an array, anything else a folder of PNGs.
    Existing files are never overwritten without --force. Errors exit with code 2.
    """


@main.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@guard
def info(model_path: str | None, threads: int | None, as_json: bool) -> None:
    """Describe the model bundle: shapes, training command, metrics."""
    from edgevae.runtime.bundle import read_bundle

    bundle = read_bundle(model_path)
    m = bundle.manifest
    if as_json:
        click.echo(json.dumps({"path": str(bundle.path), **m}, indent=2))
        return
    evaluation = m.get("evaluation") or {}
    lines = [
        f"model       {bundle.name} ({bundle.path})",
        f"images      {'x'.join(map(str, bundle.image_shape))} (C x H x W), uint8 0..255",
        f"latent      {bundle.latent_dim} dimensions, prior N(0, I)",
        f"likelihood  {m['likelihood']['kind']}, {bundle.components} components",
        f"precision   {bundle.precision}",
        f"trained by  {m.get('training', {}).get('command', 'unknown')}",
    ]
    if evaluation:
        lines.append(
            f"test set    negative ELBO {evaluation['nelbo_bpd']:.3f} bits/dim, IWAE(k={evaluation['k']}) "
            f"{evaluation['iwae_bpd']:.3f} bits/dim, reconstruction PSNR {evaluation['psnr_db']:.2f} dB "
            f"({evaluation['images']} images)"
        )
    click.echo("\n".join(lines))


@main.command()
@click.option("-n", "count", type=click.IntRange(min=1), default=16, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=None, help="Noise seed; the same seed gives identical images. "
                                                     "Default: a random seed, printed with --json.")
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Scale of the prior noise: below 1 gives more typical, less varied images.")
@output_options
@model_options
@guard
def sample(count: int, seed: int | None, temperature: float, out: str, force: bool, as_json: bool,
           model_path: str | None, threads: int | None) -> None:
    """Draw new images: decode latents from the prior N(0, I)."""
    model = _load(model_path, threads)
    seed = secrets.randbits(31) if seed is None else seed
    paths = _write(model.sample(count, temperature=temperature, seed=seed), out, force)
    _report(as_json, {"command": "sample", "count": count, "seed": seed, "temperature": temperature,
                      "outputs": paths}, f"wrote {count} samples (seed {seed}) to {_describe_written(paths)}")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@RESIZE
@output_options
@model_options
@guard
def reconstruct(inputs: tuple[str, ...], resize: bool, out: str, force: bool, as_json: bool,
                model_path: str | None, threads: int | None) -> None:
    """Encode INPUTS (image files, folders, .npy arrays) and decode them again."""
    from edgevae.runtime.images import read_images

    model = _load(model_path, threads)
    images, names = read_images(list(inputs), model.image_shape, resize=resize)
    recon = model.reconstruct(images)
    paths = _write(recon, out, force, names)
    psnr = _psnr(images, recon)
    _report(as_json, {"command": "reconstruct", "count": len(images), "mean_psnr_db": psnr, "outputs": paths},
            f"reconstructed {len(images)} image(s), mean PSNR {psnr:.2f} dB, to {_describe_written(paths)}")


def _psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


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
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary.")
@RESIZE
@model_options
@guard
def encode(inputs: tuple[str, ...], out: str, logvar_out: str | None, force: bool, as_json: bool, resize: bool,
           model_path: str | None, threads: int | None) -> None:
    """Encode INPUTS (image files, folders, .npy arrays) to latent vectors."""
    from edgevae.runtime.errors import OutputError
    from edgevae.runtime.images import read_images
    from edgevae.runtime.outputs import atomic_write_bytes, npy_bytes

    for target in (out, logvar_out):
        if target is not None and not target.lower().endswith(".npy"):
            raise OutputError(f"{target}: latents are written as .npy; give a name ending in .npy")
    model = _load(model_path, threads)
    images, names = read_images(list(inputs), model.image_shape, resize=resize)
    mean, logvar = model.encode(images)
    paths = [str(atomic_write_bytes(out, npy_bytes(mean), force))]
    if logvar_out:
        paths.append(str(atomic_write_bytes(logvar_out, npy_bytes(logvar), force)))
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
