"""``edgevae``: sample, encode, decode, reconstruct and interpolate images without PyTorch.

This module only parses arguments, calls :mod:`edgevae.runtime` and echoes results: inputs come
from :mod:`~edgevae.runtime.inputs`, summaries and descriptions from :mod:`~edgevae.runtime.reports`,
shared options from :mod:`~edgevae.runtime.clioptions`. onnxruntime and Pillow load when a command
first needs them, so ``--help`` starts quickly. Library errors become one line on stderr and exit
code 2.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from edgevae.runtime import reports
from edgevae.runtime.bundle import read_bundle
from edgevae.runtime.clicommon import (Group, check_file_target, echo, guard, progress, report, write_blobs,
                                       write_output)
from edgevae.runtime.clioptions import (FORCE, JSON_SIZES, JSON_SUMMARY, MAX_THREADS, OUT_HELP, REFINE, RESIZE,
                                        container_model, default_codec_model, default_denoise_model,
                                        info_model, inputs_argument, model_options, output_options)

from edgevae.runtime.container import SUFFIX
from edgevae.runtime.errors import InputError, OutputError
from edgevae.runtime.inputs import STDIO, gather_images, read_bytes, read_one_image, source_stem
from edgevae.runtime.model import load
from edgevae.runtime.novelty import csv_text, score as run_score
from edgevae.runtime.selection import Containers, check_vouched, compress_mode, inspect_container, load_denoiser, open_codec

__all__ = ["main", "MAX_THREADS"]


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
@model_options(default=info_model)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (or the container's description) as JSON.")
@guard
def info(container: str | None, model_path: str | None, threads: int | None, as_json: bool) -> None:
    """Describe the model bundle: shapes, training command, metrics, codec qualities.

    Given CONTAINER (an .evz file, '-' for stdin), describe it instead without decoding it:
    image count, sizes, quality, and whether it belongs to the model (checksum checked).
    """

    if container is None:
        bundle = read_bundle(model_path)
        echo(reports.bundle_json(bundle) if as_json else reports.bundle_text(bundle, note_shipped=model_path is None))
        return
    data = read_bytes(container)
    described, bundle = inspect_container(data, model_path)
    echo((reports.container_json if as_json else reports.container_text)(container, described, bundle))
    check_vouched(data, described, bundle)  # exit code 2 after the description


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
    model = load(model_path, threads=threads)
    seed = secrets.randbits(31) if seed is None else seed
    prior = prior or model.prior
    paths = write_output(model.sample(count, temperature=temperature, seed=seed, prior=prior), out, force)
    report(as_json, reports.sample(count, seed, temperature, prior, paths))


@main.command()
@inputs_argument
@RESIZE
@output_options
@model_options
@guard
def reconstruct(inputs: tuple[str, ...], resize: bool, out: str, force: bool, as_json: bool,
                model_path: str | None, threads: int | None) -> None:
    """Encode INPUTS (image files, folders, .npy arrays) and decode them again."""
    from edgevae.runtime.images import read_images

    model = load(model_path, threads=threads)
    images, names = read_images(list(inputs), model.image_shape, resize=resize)
    recon = model.reconstruct(images)
    report(as_json, reports.reconstruct(images, recon, write_output(recon, out, force, names)))


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

    model = load(model_path, threads=threads)
    ends = [read_one_image(source, model.image_shape, resize) for source in (a, b)]
    paths = write_output(model.interpolate(ends[0], ends[1], steps), out, force)
    report(as_json, reports.interpolate(steps, paths))


@main.command()
@inputs_argument
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
    from edgevae.runtime.images import read_images
    from edgevae.runtime.outputs import check_npy_name, npy_bytes, write_files

    for target in (out, logvar_out):
        check_npy_name(target, "latents")
    model = load(model_path, threads=threads)
    images, names = read_images(list(inputs), model.image_shape, resize=resize)
    mean, logvar = model.encode(images)
    files = [(out, npy_bytes(mean))] + ([(logvar_out, npy_bytes(logvar))] if logvar_out else [])
    paths = [str(p) for p in write_files(files, force)]
    report(as_json, reports.encode(len(images), model.latent_dim, names, paths))


@main.command()
@click.argument("latents", type=click.Path())
@output_options
@model_options
@guard
def decode(latents: str, out: str, force: bool, as_json: bool, model_path: str | None, threads: int | None) -> None:
    """Decode LATENTS (a .npy array (N, D) or (D,)) to images."""

    from edgevae.runtime.images import load_npy

    array = load_npy(Path(latents))
    images = load(model_path, threads=threads).decode(array)
    report(as_json, reports.decode(len(images), write_output(images, out, force)))


# -- codec ----------------------------------------------------------------------------------------


@main.command()
@inputs_argument
@click.option("-o", "--out", required=True, type=click.Path(),
              help="The .evz container to write ('-': stdout); with --split, a folder for one NAME.evz per image.")
@click.option("-q", "--quality", default=None, help=reports.quality_help())
@click.option("--split", is_flag=True, help="Write one single-image container per input image, keeping names.")
@click.option("--lossless", is_flag=True,
              help="Keep every pixel exactly (bits-back coding): about 3.2 bits/pixel instead of ~0.2; no --quality.")
@click.option("--max-error", "max_error", type=int, default=None, metavar="K",
              help="Near-lossless: every decoded pixel within K levels (1..32) of the input, guaranteed; "
                   "e.g. K=4 about 160 bytes per 28x28 image and 43 dB. No --quality or --lossless.")
@REFINE
@FORCE
@JSON_SIZES
@RESIZE
@model_options(default=default_codec_model)
@guard
def compress(inputs: tuple[str, ...], out: str, quality: str | None, split: bool, lossless: bool,
             max_error: int | None, refine: bool, force: bool, as_json: bool, resize: bool, model_path: str | None,
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
      edgevae compress shirt.png -o shirt.evz --refine        same bytes, sharper; slower to write
    """

    if split and out == STDIO:
        raise OutputError("--split writes a folder of .evz files; it cannot write to stdout")
    mode = compress_mode(quality, lossless, max_error)
    if refine and mode != "lossy":
        raise InputError(f"--refine applies to lossy coding only, not to {'--lossless' if lossless else '--max-error'}")
    if not split:  # fail before the work, not after it
        check_file_target(out, force, if_folder="pass --split to write one .evz per image into it")
    codec = open_codec(mode, model_path, threads, max_error=max_error)
    options: dict[str, str | bool] = {"quality": codec.level(quality).name} if mode == "lossy" else {}
    if refine:
        options["refine"] = True
    images, names = gather_images(inputs, codec.model.image_shape, resize)
    with progress(len(images), "compressing") as step:
        containers = (codec.compress_each(images, progress=step, **options) if split
                      else [codec.compress(images, progress=step, **options)])
    paths = write_blobs(containers, out, force, names if split else None, SUFFIX)
    report(as_json, reports.compress(containers, len(images), codec.model.image_shape, mode,
                                       options.get("quality"), max_error, paths))


@main.command()
@inputs_argument
@click.option("-o", "--out", required=True, type=click.Path(),
              help=OUT_HELP)
@click.option("--index", "indices", type=click.IntRange(min=0), multiple=True,
              help="Decode only image N of the container (0-based, repeatable); needs a single input.")
@FORCE
@JSON_SIZES
@model_options(default=container_model)
@guard
def decompress(inputs: tuple[str, ...], out: str, indices: tuple[int, ...], force: bool, as_json: bool,
               model_path: str | None, threads: int | None) -> None:
    """Decompress .evz containers (INPUTS; '-' reads stdin) to images.

    Without --model each container is decoded by the shipped bundle that made it (containers
    record their model's fingerprint). A damaged or truncated file, or one made by a model
    that is not given, is an error: nothing is written.
    """

    if indices and len(inputs) != 1:
        raise InputError("--index selects images of one container; give a single input")
    job = Containers([read_bytes(item) for item in inputs], model_path, threads)
    with progress(len(indices) or job.stored, "decompressing") as step:
        images, names = job.decompress([source_stem(item) for item in inputs], list(indices) or None, step)
    paths = write_output(images, out, force, names)
    report(as_json, reports.decompress(job.blobs, job.stored, len(images), job.image_shape, paths))


# -- applications ---------------------------------------------------------------------------------


@main.command()
@inputs_argument
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
@model_options(default=default_denoise_model)
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

    level = noise_level(noise, sigma, amount)  # a bad level fails before the model loads
    model = load_denoiser(model_path, threads)
    images, names = gather_images(inputs, model.image_shape, resize)
    with progress(len(images), "denoising") as step:
        clean, used = denoise_with_levels(model, images, sigma=sigma, noise=noise, amount=amount, samples=samples,
                                          refine=refine, progress=step)
    paths = write_output(clean, out, force, names)
    report(as_json, reports.denoise(len(images), noise, level, used, str(model.bundle.path), paths))


@main.command()
@inputs_argument
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

    check_file_target(out, force)  # fail before the work, not after it
    model = load(model_path, threads=threads)
    images, names = gather_images(inputs, model.image_shape, resize)
    with progress(len(images), "scoring") as step:
        scores = run_score(model, images, samples=samples, progress=step)
    write_blobs([csv_text(names, scores).encode()], out, force)
    report(as_json, reports.score(names, scores, str(model.bundle.path), out))

