"""The options the ``edgevae`` commands share: --model (its help naming the shipped bundles and
the command's default, read when the help is shown), --threads, -o/--out, --force, --json, --resize,
compress's --refine.

Only click at import (bundles are read when a help is shown): ``edgevae --help`` must start instantly.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

OUT_HELP = ("Where to write: NAME.png writes the image itself (one image) or a grid of them (several), "
            "NAME.npy the uint8 array (N, C, H, W), anything else is a folder (created if needed) "
            "with one PNG per image; '-' writes that PNG to stdout (the summary then goes to stderr).")

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


def default_model() -> str:
    """The bundle commands use without --model (for the help)."""
    from edgevae.runtime.bundle import default_bundle_path

    return default_bundle_path().name


def default_denoise_model() -> str:
    """The bundle denoise uses without --model (for the help)."""
    from edgevae.runtime.bundle import default_denoise_bundle_path

    return f"{default_denoise_bundle_path().name} (trained for denoising)"


def default_codec_model() -> str:
    """The bundles compress uses without --model (for the help)."""
    from edgevae.runtime.bundle import default_bundle_path, default_codec_bundle_path

    return f"{default_codec_bundle_path().name} (lossy) or {default_bundle_path().name} (--lossless)"


def container_model() -> str:
    """The bundle decompress uses without --model (for the help)."""
    return "the shipped bundle that made each container (containers record its fingerprint)"


def info_model() -> str:
    """The bundle info describes without --model (for the help)."""
    return f"{default_model()}; for a CONTAINER, the shipped bundle that made it"


def model_options(fn: F | None = None, *, default: Callable[[], str] = default_model) -> Any:
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
REFINE = click.option("--refine", is_flag=True,
                      help="Lossy levels only: choose each image's symbols with the decoder in the loop (a greedy "
                           "search for fewer bits and less error) instead of rounding the encoder's output. Buys "
                           "0.6-0.9 dB of PSNR with 0.5-2.4% fewer bytes (fashion-mnist-codec and -hq); costs "
                           "compress time: about 90 decoder runs per image, 10-50 images/s per core instead of "
                           "thousands. "
                           "The files are ordinary containers: every edgevae and the web page decode them as usual.")
RESIZE = click.option("--resize", is_flag=True,
                      help="Convert colour and resize + centre-crop inputs to the model's image shape "
                           "(default: refuse inputs of another shape).")


def output_options(fn: F) -> F:
    """-o/--out, --force and --json, shared by every command that writes images or arrays."""
    fn = JSON_SUMMARY(fn)
    fn = FORCE(fn)
    return click.option("-o", "--out", required=True, type=click.Path(), help=OUT_HELP)(fn)


def inputs_argument(fn: F) -> F:
    """INPUTS: one or more image files, folders or .npy arrays."""
    return click.argument("inputs", nargs=-1, required=True, type=click.Path())(fn)
