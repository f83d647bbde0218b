"""``edgevae-train``: train, evaluate and export VAEs. Parses, calls the library, echoes."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Callable, Iterator

import click

from edgevae.runtime.clicommon import Group, echo, guard
from edgevae.runtime.errors import InputError
from edgevae.training import summaries


def _parse_ints(text: str, sep: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(sep))
    except ValueError:
        raise click.BadParameter(f"{what} must be integers separated by '{sep}', got {text!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{what} must be positive, got {text!r}")
    return values


def _parse_factors(text: str | None) -> tuple[float, ...] | None:
    """--step-factors: comma-separated numbers, one per quality level; export checks them against the
    bundle's levels (runtime/quality.py)."""
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--step-factors: {text!r} is not a list of numbers") from None


def _factors_help(what: str) -> dict[str, str]:
    """metavar and help of --step-factors, from the standard quality levels (so a new level shows)."""
    from edgevae.runtime.quality import QUALITY_LEVELS

    names = ",".join(level.name for level in QUALITY_LEVELS)
    factors = ",".join(f"{level.step_factor:g}" for level in QUALITY_LEVELS)
    return {"metavar": ",".join("F" for _ in QUALITY_LEVELS),
            "help": f"Codec quality levels {names}: latent step = factor x median posterior std. {what} "
                    f"(standard: {factors})."}


def threads_option(command: Any) -> Any:
    """``--threads N``: torch's CPU threads for a command (training, evaluation and export all run torch).

    Set before any work, so two runs can share a machine one core each.
    """
    def set_threads(_ctx: click.Context, _param: click.Parameter, value: int | None) -> int | None:
        if value is not None:
            import torch

            torch.set_num_threads(value)
        return value

    return click.option("--threads", type=click.IntRange(min=1), default=None, expose_value=False, is_eager=True,
                        callback=set_threads, help="Torch CPU threads (default: torch's choice, all cores).")(command)


def run_options(command: Any) -> Any:
    """The options every run that fine-tunes from a bundle takes (context, integer, integer-context):
    --out, --batch-size, --data, --resume."""
    for option in reversed((
            click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder to create."),
            click.option("--batch-size", default=128, show_default=True, help="Images per optimizer step."),
            click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
                         help="Folder with the Fashion-MNIST IDX files (as for train)."),
            click.option("--resume", is_flag=True,
                         help="Continue the run in --out from its last checkpoint (other options ignored)."))):
        command = option(command)
    return command


def export_options(writes: str, data_for: str = "checks and evaluation") -> Callable[[Any], Any]:
    """RUN_DIR, -o/--out (the bundle folder, which gets ``writes``), --data and --force: the signature
    of the commands that export a fine-tuning run as a bundle."""
    def apply(command: Any) -> Any:
        for option in reversed((
                click.argument("run_dir", type=click.Path(file_okay=False)),
                click.option("-o", "--out", "bundle_dir", required=True, type=click.Path(file_okay=False),
                             help=f"Bundle folder to write ({writes})."),
                click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
                             help=f"Folder with the Fashion-MNIST IDX files ({data_for})."),
                click.option("--force", is_flag=True, help="Replace an existing bundle in --out."))):
            command = option(command)
        return command
    return apply


def _say(lines: list[str]) -> None:
    for line in lines:
        echo(line)


@contextlib.contextmanager
def progress_bar(total: int, label: str) -> Iterator[Any]:
    """A click progress bar that shows the object's ``loss`` text live."""
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
        bar.loss = ""
        bar.item_show_func = lambda _: bar.loss
        yield bar


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train a VAE, evaluate it, and export it as an edgevae bundle (encoder.onnx,
    decoder.onnx, model.json) that the torch-free ``edgevae`` runtime loads.

    \b
    Typical session:
      edgevae-train train --dataset fashion-mnist --epochs 30 --out runs/fm
      edgevae-train evaluate runs/fm
      edgevae-train export runs/fm -o my-bundle
    """


@main.command()
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="'fashion-mnist' (IDX files, see --data) or a folder of PNG/JPEG images (searched recursively).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the Fashion-MNIST IDX files. Default: $EDGEVAE_DATA, then Debian's "
                   "/usr/share/datasets/fashion-mnist.")
@click.option("--image-shape", default="1,28,28", show_default=True,
              help="C,H,W that folder images are converted, resized and cropped to (ignored for fashion-mnist).")
@click.option("--latent-dim", default=32, show_default=True, help="Size of the latent vector z.")
@click.option("--widths", default="32,64,128", show_default=True,
              help="Convolution widths per resolution level; each level after the first halves H and W.")
@click.option("--res-blocks", default=0, show_default=True, help="Residual blocks per lower-resolution level.")
@click.option("--components", default=5, show_default=True, help="Logistic mixture components per pixel.")
@click.option("--upsample", default="pixel-shuffle", show_default=True,
              help="How the decoder doubles H and W: 'pixel-shuffle' (conv + depth-to-space) or 'nearest' (nearest "
                   "resize + conv): same FLOPs, 'nearest' is ~1.2x faster in onnxruntime and slower to train.")
@click.option("--epochs", default=30, show_default=True, help="Passes over the training set (the LR schedule spans them all).")
@click.option("--batch-size", default=128, show_default=True, help="Images per optimizer step.")
@click.option("--lr", default=2e-3, show_default=True, help="Peak Adam learning rate (cosine decay).")
@click.option("--beta", default=1.0, show_default=True, help="Weight of the KL term after warm-up (1 = true ELBO).")
@click.option("--kl-warmup-epochs", default=1.0, show_default=True, help="Epochs over which beta ramps from 0.")
@click.option("--free-bits", default=0.0, show_default=True, help="Minimum KL per latent dimension in nats (0 = off).")
@click.option("--distortion-sigma", default=0.0, show_default=True,
              help="Pixel levels. > 0 also scores the mean image as a Gaussian of this std (adds SSE/(2 sigma^2)): "
                   "sharper reconstructions for more latent bits, i.e. a codec bundle. 0 = the plain ELBO.")
@click.option("--seed", default=0, show_default=True, help="Seeds initialisation, shuffling and noise: same seed, same run.")
@threads_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train: auto = CUDA when PyTorch sees a GPU (one GPU per process under torchrun).")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader processes decoding a folder data set from disk, per training process "
                   "(0 = decode in the training process). Fashion-MNIST is held in memory and needs none.")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder to create.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (other options ignored; "
                                             "any number of processes).")
@guard
def train(dataset: str, data_dir: str | None, image_shape: str, latent_dim: int, widths: str, res_blocks: int,
          components: int, upsample: str, epochs: int, batch_size: int, lr: float, beta: float, kl_warmup_epochs: float,
          free_bits: float, distortion_sigma: float, seed: int, device: str, workers: int, run_dir: str,
          resume: bool) -> None:
    """Train a VAE; checkpoints every epoch into --out (Ctrl-C keeps the last one).

    Writes config.json, last.pt, metrics.jsonl (one line per epoch with test metrics),
    and at the end curve.png and samples.png.

    \b
    On several processes or machines, start it with torchrun (README: "Training on
    several processes or machines"); --batch-size is then the global batch:
      torchrun --standalone --nproc-per-node 2 -m edgevae.training train ... --out runs/x
    """
    from edgevae.training import distributed
    from edgevae.training.data import FASHION_MNIST_SHAPE
    from edgevae.training.model import ModelConfig, check_upsample
    from edgevae.training.train import TrainConfig

    if distortion_sigma < 0:
        raise InputError("--distortion-sigma must be >= 0 (0 = off)")
    try:
        check_upsample(upsample)  # before loading the data set, which takes seconds
    except ValueError as e:
        raise InputError(f"--{e}") from None
    shape = _parse_ints(image_shape, ",", "--image-shape")
    if len(shape) != 3:
        raise click.BadParameter("--image-shape needs C,H,W")
    try:
        model_config = ModelConfig(image_shape=shape if dataset != "fashion-mnist" else FASHION_MNIST_SHAPE,
                                   latent_dim=latent_dim, channels=_parse_ints(widths, ",", "--widths"),
                                   res_blocks=res_blocks, mixture_components=components, upsample=upsample)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    config = TrainConfig(dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, beta=beta,
                         kl_warmup_epochs=kl_warmup_epochs, free_bits=free_bits,
                         distortion_sigma=distortion_sigma, seed=seed)
    try:
        context = distributed.start(device)
    except ValueError as e:
        raise InputError(str(e)) from None
    try:
        _train_on(context, config, model_config, data_dir, workers, run_dir, resume)
    finally:
        distributed.stop(context)


def _train_on(context: Any, config: Any, model_config: Any, data_dir: str | None, workers: int, run_dir: str,
              resume: bool) -> None:
    """The train command on this process: rank 0 prints and writes, the others stay quiet;
    a failure or interrupt on any rank stops them all with one clear line each
    (:func:`edgevae.training.distributed.rank_failure` says which)."""
    from edgevae.training import distributed, report
    from edgevae.training.data import open_dataset
    from edgevae.training.train import check_run_folder, on_rank_0, run_settings, train as run_training

    main_rank = context.is_main
    say = echo if main_rank else (lambda *_a, **_k: None)
    try:
        on_rank_0(context, lambda: check_run_folder(run_dir, resume))  # before the data, which take a while
        if resume:  # the run's own data set, split and sizes, whatever the other options say
            config, model_config = on_rank_0(context, lambda: run_settings(run_dir))
        data = open_dataset(config.dataset, model_config.image_shape, data_dir, seed=config.seed, workers=workers,
                            processes=context if context.distributed else None,
                            progress=progress_bar if main_rank else None, log=say)
        say(f"{data.name}: {len(data.train)} train / {len(data.test)} test images of shape {data.image_shape}")
        say(f"training on {context.describe()}")
        model = run_training(data, model_config, config, run_dir, resume=resume, progress=progress_bar, log=echo,
                             context=context, workers=workers)
    except BaseException as e:
        ending = distributed.rank_failure(e, context, run_dir)
        if ending is None:
            raise
        line, code = ending
        if line is not None:
            echo(line, err=True)
        sys.exit(code)
    if main_rank:
        report.write_run_figures(model, run_dir, seed=config.seed)
        echo(f"done: {run_dir}/curve.png, {run_dir}/samples.png")
    distributed.finish(context)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--k", default=64, show_default=True, help="Importance samples per image for the IWAE bound.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the Fashion-MNIST IDX files (as for train).")
@click.option("--limit", default=None, type=int, help="Evaluate only the first N test images (default: all).")
@click.option("--seed", default=0, show_default=True, help="Seeds the posterior samples.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@threads_option
@guard
def evaluate(run_dir: str, k: int, data_dir: str | None, limit: int | None, seed: int, as_json: bool) -> None:
    """Negative ELBO and IWAE bound (bits/dim) and reconstruction PSNR on the test set.

    Also writes RUN_DIR/evaluation.json, which export copies into the bundle manifest.
    """
    from edgevae.training.evaluate import evaluate_run

    metrics = evaluate_run(run_dir, k=k, data_dir=data_dir, limit=limit, seed=seed, progress=progress_bar)
    _say([json.dumps(metrics, indent=2)] if as_json else summaries.evaluation(metrics, k))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--out", "bundle_dir", required=True, type=click.Path(file_okay=False),
              help="Bundle folder to write (encoder.onnx, decoder.onnx, model.json).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the Fashion-MNIST IDX files, for the parity check on real test images.")
@click.option("--force", is_flag=True, help="Replace an existing bundle in --out.")
@click.option("--step-factors", default=None,
              **_factors_help("A codec bundle (trained with --distortion-sigma) needs coarser ones than the standard"))
@click.option("--precision", type=click.Choice(["fp32", "int8", "fp16"]), default="fp32", show_default=True,
              help="Arithmetic of the graphs: int8 (static QDQ quantization calibrated on training images) "
                   "and fp16 are made from the checked fp32 graphs and checked against them.")
@threads_option
@guard
def export(run_dir: str, bundle_dir: str, data_dir: str | None, force: bool, step_factors: str | None,
           precision: str) -> None:
    """Export RUN_DIR's model to ONNX and check ONNX Runtime against PyTorch.

    Fails (exit 2, nothing written) if the graphs do not match PyTorch within 1e-4, or if an
    int8/fp16 variant loses more than its bounds (PSNR, bits/dim) against the fp32 graphs.
    """
    from edgevae.training.export import export_run

    factors = _parse_factors(step_factors)
    manifest = export_run(run_dir, bundle_dir, data_dir=data_dir, force=force, precision=precision,
                          step_factors=factors)
    _say(summaries.export(manifest, bundle_dir, precision))


@main.command("codec-tables")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the Fashion-MNIST IDX files (as for train).")
@click.option("--step-factors", default=None,
              **_factors_help("Default: the bundle's own levels and factors, else the standard ones"))
@threads_option
@guard
def codec_tables(bundle_dir: str, data_dir: str | None, step_factors: str | None) -> None:
    """Fit the lossy codec's tables (codec.json) of an existing bundle on its training set.

    export already writes them; this adds or refits them in place (model.json is updated).
    Containers made with the old tables no longer decode.
    """
    from edgevae.training.codec_tables import add_codec_tables

    tables = add_codec_tables(bundle_dir, data_dir=data_dir, step_factors=_parse_factors(step_factors))
    _say(summaries.codec_tables(tables, bundle_dir))


@main.command()
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--kind", type=click.Choice(["flow", "two-stage"]), default="flow", show_default=True,
              help="'flow': a RealNVP normalizing flow (exact likelihood); 'two-stage': the second-stage VAE of "
                   "Dai & Wipf 2019. benchmarks/samples.py compares them.")
@click.option("--hidden", default=128, show_default=True, help="Width of every hidden layer.")
@click.option("--layers", default=16, show_default=True,
              help="Coupling layers (flow) or hidden layers per MLP (two-stage, at most 4 used).")
@click.option("--epochs", default=30, show_default=True, help="Passes over the training latents (a fresh z ~ q(z|x) each).")
@click.option("--lr", default=1e-3, show_default=True, help="Peak Adam learning rate (one-cycle schedule).")
@click.option("--seed", default=0, show_default=True, help="Seeds initialisation and the latent draws.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the Fashion-MNIST IDX files (as for train).")
@click.option("--force", is_flag=True, help="Replace the bundle's existing prior.")
@threads_option
@guard
def prior(bundle_dir: str, kind: str, hidden: int, layers: int, epochs: int, lr: float, seed: int,
          data_dir: str | None, force: bool) -> None:
    """Fit a learned prior for sampling and add it to BUNDLE_DIR as prior.onnx.

    Encodes the bundle's training set with its own encoder, fits a density over z ~ q(z|x)
    that maps N(0, I) noise to latents, exports it, checks ONNX Runtime against PyTorch and
    records it in model.json. encoder.onnx, decoder.onnx and codec.json are not touched, so
    the bundle's fingerprint (and every container made with it) stays valid. 'edgevae sample'
    then uses it by default.
    """
    from edgevae.training.prior import PriorConfig, add_prior

    config = PriorConfig(kind=kind, hidden=hidden, layers=layers, epochs=epochs, lr=lr, seed=seed)
    manifest = add_prior(bundle_dir, config, data_dir=data_dir, force=force, progress=progress_bar, log=echo)
    _say(summaries.prior(manifest, bundle_dir))


@main.command("denoise-train")
@click.option("--from", "source", default="fashion-mnist", show_default=True,
              help="Bundle (folder or shipped name) whose decoder is kept frozen and whose encoder is the start.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the Fashion-MNIST IDX files (as for train).")
@click.option("--epochs", default=4, show_default=True, help="Passes over the training set (fresh noise each time).")
@click.option("--batch-size", default=128, show_default=True, help="Images per optimizer step.")
@click.option("--lr", default=1e-3, show_default=True, help="Peak Adam learning rate (cosine decay).")
@click.option("--sigma-max", default=100.0, show_default=True,
              help="Gaussian noise std is drawn uniformly from [0, this] pixel levels, per image.")
@click.option("--salt-pepper-share", default=0.25, show_default=True,
              help="Fraction of images corrupted by salt-and-pepper instead of Gaussian noise.")
@click.option("--salt-pepper-max", default=0.3, show_default=True,
              help="Salt-and-pepper fraction is drawn uniformly from [0, this], per image.")
@click.option("--seed", default=0, show_default=True, help="Seeds shuffling and noise.")
@threads_option
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder to create.")
@guard
def denoise_train(source: str, data_dir: str | None, epochs: int, batch_size: int, lr: float, sigma_max: float,
                  salt_pepper_share: float, salt_pepper_max: float, seed: int, run_dir: str) -> None:
    """Train a denoising encoder: noisy images in, the ELBO of the clean image as loss, decoder frozen.

    Checkpoints every epoch into --out; export with denoise-export.
    """
    from edgevae.runtime.bundle import read_bundle
    from edgevae.training.data import bundle_dataset
    from edgevae.training.denoise import DenoiseConfig, train_encoder

    config = DenoiseConfig(source=source, epochs=epochs, batch_size=batch_size, lr=lr, sigma_max=sigma_max,
                           salt_pepper_share=salt_pepper_share, salt_pepper_max=salt_pepper_max, seed=seed)
    data = bundle_dataset(read_bundle(source), data_dir)  # the source bundle's own data set and split
    train_encoder(data.train, data.test, config, run_dir, log=lambda line: echo(line, err=True))


@main.command("denoise-export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the Fashion-MNIST IDX files (parity check images).")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
@threads_option
@guard
def denoise_export(run_dir: str, bundle_dir: str, data_dir: str | None, force: bool) -> None:
    """Export a denoise-train run as a bundle: its encoder + the source bundle's decoder, unchanged."""
    from edgevae.training.denoise import export_denoise_bundle

    manifest = export_denoise_bundle(run_dir, bundle_dir, force=force, data_dir=data_dir)
    _say(summaries.denoise_bundle(manifest, bundle_dir))


@main.command("novelty-threshold")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the Fashion-MNIST IDX files (as for train).")
@click.option("--percentile", default=99.0, show_default=True,
              help="Training images' novelty percentile used as the threshold: about (100 - this) % of "
                   "training-like images get flagged.")
@click.option("--images", "count", default=5000, show_default=True,
              help="Training images (a seeded random subset) the percentile is taken over.")
@click.option("--samples", default=4, show_default=True, help="Monte Carlo samples per negative ELBO.")
@click.option("--seed", default=0, show_default=True, help="Seeds the subset and the Monte Carlo samples.")
@threads_option
@guard
def novelty_threshold(bundle_dir: str, data_dir: str | None, percentile: float, count: int, samples: int,
                      seed: int) -> None:
    """Fit the novelty threshold of an existing bundle on its training set; recorded in model.json.

    Only model.json changes (the graphs, codec tables and fingerprint do not).
    """
    from edgevae.training.novelty import add_novelty_threshold

    entry = add_novelty_threshold(bundle_dir, data_dir=data_dir, percentile=percentile, count=count,
                                  samples=samples, seed=seed)
    _say(summaries.novelty_threshold(entry, bundle_dir))


def _fine_tuning_feedback() -> dict[str, Any]:
    """progress and log of a fine-tuning run (training/finetune.py): a bar on a terminal, else a log
    line every 50 steps into a file (nohup runs are polled); epoch lines on stderr."""
    return {"progress": progress_bar if sys.stderr.isatty() else None, "log": lambda line: echo(line, err=True)}


def _say_fine_tuned(run_dir: str, metrics: dict[str, Any], more: str = "") -> None:
    echo(f"done: {run_dir}/last.pt after epoch {metrics['epoch']}: negative ELBO {metrics['nelbo_bpd']:.4f} bits/dim "
         f"(test split, one sample per image{more})")


@main.command("context")
@click.argument("source")
@run_options
@click.option("--groups", type=click.IntRange(min=2), default=None,
              help="Pixel groups (default 4, or the --tile's). Without --tile: 2 = checkerboard; 4 = the 2x2 "
                   "positions (0,0), (1,1), (0,1), (1,0). More groups: more context, one more context-net pass "
                   "per group when decoding.")
@click.option("--tile", default=None, metavar="ROWS",
              help="The group of each position of a tile that repeats over the image: rows split by '/', group "
                   "numbers by ','. 0,1/2,3 codes a 2x2 block in raster order, so the second group already has "
                   "two direct neighbours.")
@click.option("--hidden", default=32, show_default=True, help="Channels of the context net's 3x3 layers.")
@click.option("--layers", default=3, show_default=True, help="3x3 layers of the context net (receptive field 2n+1).")
@click.option("--aux-weight", default=0.05, show_default=True,
              help="Weight of the decoder's own likelihood of the later groups, which keeps decoder.onnx a full decoder.")
@click.option("--frozen-vae", is_flag=True,
              help="Train the context net alone; the bundle keeps SOURCE's encoder.onnx and decoder.onnx byte for byte.")
@click.option("--epochs", default=8, show_default=True, help="Training epochs.")
@click.option("--lr", default=5e-4, show_default=True,
              help="Peak Adam learning rate of the VAE (the context net's is 4x; cosine decay to 2%).")
@click.option("--seed", default=0, show_default=True, help="Seeds shuffling and noise.")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="End after this epoch of the --epochs schedule (the learning rate still follows all of it); "
                   "--resume goes on from there.")
@threads_option
@guard
def context(source: str, run_dir: str, groups: int | None, tile: str | None, hidden: int, layers: int, aux_weight: float, frozen_vae: bool,
            epochs: int, lr: float, batch_size: int, seed: int, data_dir: str | None, resume: bool, stop_after: int | None) -> None:
    """Give a float bundle SOURCE (folder or shipped name) a context likelihood for lossless coding.

    \b
    The image is coded in pixel groups; each group after the first is predicted by a small
    convolutional net from the decoder's mixture and the pixels of the groups before it, so
    lossless files shrink by what neighbouring pixels tell about each other:
      1. read SOURCE's float weights from its ONNX initializers, add a context net that starts
         as the identity (epoch 0 = SOURCE, evaluated on the test split);
      2. train both --epochs epochs on the grouped negative ELBO; checkpoint and evaluate after each.
    Then: edgevae-train context-export RUN_DIR -o BUNDLE_DIR.

    \b
    Example (the shipped fashion-mnist-context2: 4 groups in raster order, the VAE frozen):
      edgevae-train context fashion-mnist --tile 0,1/2,3 --frozen-vae --epochs 7 --threads 1 --out runs/fm-context2
      edgevae-train context-export runs/fm-context2 -o exported/fashion-mnist-context2
    """
    import torch

    from edgevae.training.context import ContextConfig, parse_tile, train_context

    try:
        rows = parse_tile(tile) if tile is not None else None
        if groups is None:
            groups = 4 if rows is None else 1 + max(max(row) for row in rows)
        config = ContextConfig(source=source, groups=groups, tile=rows, hidden=hidden, layers=layers, aux_weight=aux_weight,
                               frozen_vae=frozen_vae, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, threads=torch.get_num_threads())
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    metrics = train_context(config, run_dir, data_dir=data_dir, resume=resume, stop_after=stop_after,
                            **_fine_tuning_feedback())
    _say_fine_tuned(run_dir, metrics, f"; the decoder alone {metrics['decoder_only_nelbo_bpd']:.4f}")


@main.command("context-export")
@export_options("encoder.onnx, decoder.onnx, context.onnx, model.json")
@threads_option
@guard
def context_export(run_dir: str, bundle_dir: str, data_dir: str | None, force: bool) -> None:
    """Export a 'context' run as a bundle with pixel groups (model.json "pixel_groups").

    Refuses (exit 2, nothing written) unless ONNX Runtime matches PyTorch on every graph,
    context.onnx on every group's mask. The bundle codes lossless files (compress --lossless
    --model BUNDLE_DIR); it has no lossy codec tables.
    """
    from edgevae.training.context import export_context

    manifest = export_context(run_dir, bundle_dir, data_dir=data_dir, force=force)
    ev = manifest["evaluation"]
    _say([f"wrote {bundle_dir}: encoder.onnx, decoder.onnx, context.onnx, model.json "
          f"({manifest['pixel_groups']} pixel groups)",
          f"negative ELBO {ev['nelbo_bpd']:.4f} bits/dim on {ev['images']} test images "
          f"(the decoder alone {ev['decoder_only_nelbo_bpd']:.4f}, same noise)"])


@main.command("integer")
@click.argument("source")
@run_options
@click.option("--epochs", default=4, show_default=True,
              help="Quantization-aware fine-tuning epochs after calibration; 0 = post-training quantization only.")
@click.option("--lr", default=1e-4, show_default=True, help="Peak Adam learning rate (cosine decay to 2%).")
@click.option("--calibration-images", default=4096, show_default=True,
              help="Training images (a seeded draw) whose activations set each channel's integer step.")
@click.option("--seed", default=0, show_default=True, help="Seeds the calibration draw, shuffling and noise.")
@threads_option
@guard
def integer(source: str, run_dir: str, epochs: int, lr: float, batch_size: int, calibration_images: int, seed: int,
            data_dir: str | None, resume: bool) -> None:
    """Turn a float bundle SOURCE (folder or shipped name) into an integer network.

    \b
    The integer network computes with integers carried exactly in float32, so every engine
    (onnxruntime CPU or WASM, a C loop) gives the same grid indices:
      1. read SOURCE's float weights from its ONNX initializers;
      2. calibrate each channel's activation step on training images (epoch 0 = post-training
         quantization, evaluated on the test split and checkpointed);
      3. fine-tune --epochs epochs on the integer network itself (straight-through rounding,
         negative ELBO on the contract's grids), checkpoint and evaluate after each.
    Then: edgevae-train integer-export RUN_DIR -o BUNDLE_DIR.

    \b
    Example (the shipped integer bundle):
      edgevae-train integer fashion-mnist --epochs 4 --threads 1 --out runs/fm-exact
      edgevae-train integer-export runs/fm-exact -o exported/fashion-mnist-exact
    """
    from edgevae.training.integer_run import IntegerConfig, train_integer

    import torch

    config = IntegerConfig(source=source, epochs=epochs, lr=lr, batch_size=batch_size,
                           calibration_images=calibration_images, seed=seed, threads=torch.get_num_threads())
    metrics = train_integer(config, run_dir, data_dir=data_dir, resume=resume, **_fine_tuning_feedback())
    _say_fine_tuned(run_dir, metrics)


@main.command("integer-export")
@export_options("encoder.onnx, decoder.onnx, model.json, codec.json if the source has one",
                "checks, codec tables, evaluation")
@click.option("--step-factors", default=None,
              **_factors_help("Default: the source bundle's own levels and factors"))
@threads_option
@guard
def integer_export(run_dir: str, bundle_dir: str, data_dir: str | None, step_factors: str | None, force: bool) -> None:
    """Export an 'integer' run as an integer bundle (model.json "arithmetic": "integer").

    Refuses (exit 2, nothing written) unless every layer's worst partial sum stays below 2**24
    and ONNX Runtime's outputs equal the numpy int64 reference (and the torch forward) exactly on
    real, edge (all 0, all 255) and extreme-latent inputs. Records the test negative ELBO of the
    graphs next to the source bundle's, and both graphs' one-thread times.
    """
    from edgevae.training.integer_run import export_integer

    manifest = export_integer(run_dir, bundle_dir, data_dir=data_dir, force=force,
                              step_factors=_parse_factors(step_factors))
    ev = manifest["evaluation"]
    _say([f"wrote {bundle_dir}: encoder.onnx, decoder.onnx, model.json{', codec.json' if 'codec' in manifest else ''} "
          f"(integer arithmetic; exact against the int64 reference on {manifest['parity']['compared']})",
          f"negative ELBO {ev['nelbo_bpd']:.4f} bits/dim on {ev['images']} test images "
          f"(source float graphs {ev['source_nelbo_bpd']:.4f}, same noise)"])


@main.command("integer-context")
@click.argument("context_bundle")
@click.option("--integer", "integer_bundle", default="fashion-mnist-exact", show_default=True,
              help="Integer bundle (folder or shipped name) whose encoder.onnx and decoder.onnx the new bundle keeps, "
                   "byte for byte; the net trains on its decoder's outputs.")
@run_options
@click.option("--epochs", default=3, show_default=True,
              help="Quantization-aware fine-tuning epochs after calibration; 0 = post-training quantization only.")
@click.option("--lr", default=2e-4, show_default=True, help="Peak Adam learning rate (cosine decay to 2%).")
@click.option("--calibration-images", default=2048, show_default=True,
              help="Training images (a seeded draw, each under one group's mask) whose activations set each "
                   "channel's integer step.")
@click.option("--seed", default=0, show_default=True, help="Seeds the calibration draw, shuffling and noise.")
@threads_option
@guard
def integer_context(context_bundle: str, integer_bundle: str, run_dir: str, epochs: int, lr: float, batch_size: int,
                    calibration_images: int, seed: int, data_dir: str | None, resume: bool) -> None:
    """Make the context net of a float context bundle CONTEXT_BUNDLE an integer net on --integer's VAE.

    \b
    A float context bundle's lossless files decode in Python only; an integer one's decode on every
    engine, because every graph computes the same integers everywhere:
      1. read CONTEXT_BUNDLE's context net from its context.onnx;
      2. calibrate each channel's activation step on the integer decoder's outputs for training
         images (epoch 0 = post-training quantization, evaluated on the test split);
      3. fine-tune --epochs epochs on the integer net itself (straight-through rounding, grouped
         negative ELBO; the integer VAE frozen, run as its own ONNX graphs).
    Then: edgevae-train integer-context-export RUN_DIR -o BUNDLE_DIR.

    \b
    Example (the shipped fashion-mnist-context2-exact):
      edgevae-train integer-context fashion-mnist-context2 --integer fashion-mnist-exact --threads 1 --out runs/fm-ctx2-exact
      edgevae-train integer-context-export runs/fm-ctx2-exact -o exported/fashion-mnist-context2-exact
    """
    import torch

    from edgevae.training.integer_context_run import IntegerContextConfig, train_integer_context

    config = IntegerContextConfig(context=context_bundle, integer=integer_bundle, epochs=epochs, lr=lr,
                                  batch_size=batch_size, calibration_images=calibration_images, seed=seed,
                                  threads=torch.get_num_threads())
    metrics = train_integer_context(config, run_dir, data_dir=data_dir, resume=resume, **_fine_tuning_feedback())
    _say_fine_tuned(run_dir, metrics, f"; the integer decoder alone {metrics['decoder_only_nelbo_bpd']:.4f}")


@main.command("integer-context-export")
@export_options("encoder.onnx, decoder.onnx, context.onnx, model.json")
@threads_option
@guard
def integer_context_export(run_dir: str, bundle_dir: str, data_dir: str | None, force: bool) -> None:
    """Export an 'integer-context' run as an integer bundle with pixel groups.

    Refuses (exit 2, nothing written) unless every layer's worst partial sum stays below 2**24 and
    ONNX Runtime's context.onnx equals the numpy int64 reference (and the torch forward) exactly on
    the decoder's outputs for real images under every group's mask and on edge inputs. Its lossless
    files (compress --lossless --model BUNDLE_DIR) decode in Python, Node and browsers alike.
    """
    from edgevae.training.integer_context_run import export_integer_context

    manifest = export_integer_context(run_dir, bundle_dir, data_dir=data_dir, force=force)
    ev = manifest["evaluation"]
    _say([f"wrote {bundle_dir}: encoder.onnx, decoder.onnx, context.onnx, model.json "
          f"({manifest['pixel_groups']} pixel groups, integer arithmetic; context.onnx exact against the int64 "
          f"reference on {manifest['parity']['context']['compared']} inputs)",
          f"negative ELBO {ev['nelbo_bpd']:.4f} bits/dim on {ev['images']} test images through the graphs"])
