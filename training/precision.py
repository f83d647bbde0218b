"""Reduced-precision bundles: int8 (static QDQ quantization) and fp16 variants of an fp32 bundle.

A variant is a complete bundle folder made from the two fp32 graphs of an exported bundle;
the uint8-in / uint8-out contract of :mod:`edgevae.runtime.contract` is unchanged, only the
arithmetic inside the graphs differs. Its ``model.json`` says ``"precision": "int8"`` (or
``fp16``), its graphs have new sha256s (so codec containers made with one bundle refuse the
other), and it records where it came from and how well it matches::

    fp32 bundle --(int8: quantize_static QDQ, calibrated on training images)--> variant graphs
                --(fp16: onnxruntime.transformers float16, likelihood head kept fp32)-->
    variant graphs + fp32 graphs, on test images --> check (diffs, PSNR, bits/dim) --> model.json

The check. A quantized graph cannot meet the 1e-4 parity of the fp32 export (8-bit
activations alone move outputs by ~1e-2), and comparing it with PyTorch would mix two
questions. So ``parity`` in a variant's manifest is the one of its fp32 source graphs (ONNX
vs PyTorch, the chain of trust), and ``variant.check`` compares the variant with those fp32
ONNX graphs on real test images:

- max / RMS abs difference of every float output (encoder on the images, decoder on the fp32
  posterior means, so each graph's error is seen alone); recorded for both precisions and
  bounded for fp16 only, where a per-element bound means something;
- what a user sees, end to end through each bundle's own encoder and decoder: reconstruction
  PSNR (decode the posterior mean) and the single-sample negative ELBO in bits/dim, both from
  the graphs' outputs with the same seeded noise. :data:`BOUNDS` caps the PSNR loss and the
  bits/dim increase; int8's PSNR cap is the one that makes a variant worth shipping (0.3 dB).

int8 choices, each measured on the Fashion-MNIST model (see benchmarks/speed.py):

- QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration: what
  onnxruntime recommends for conv nets on CPU (dynamic quantization would give ConvInteger).
- ``reduce_range`` (7-bit weights): without VNNI, x86 CPUs multiply u8 x s8 with a saturating
  instruction; full-range weights cost ~1 dB PSNR there. A bundle must be right on every CPU.
- Quantized: the convolution bodies (Conv, Relu, DepthToSpace or Resize: the ReLUs fold into the
  convolutions' output ranges) and the linear layers (Gemm), whose outputs stay float: the
  encoder head's outputs are the latents, and 8-bit latents would be a codec of their own.
  The decoder's last convolution stays fp32: its outputs are the likelihood parameters.
  Quantizing the linear layers' weights is what makes the bundle ~1/3.5 of the fp32 size.
- Calibration: :data:`CALIBRATION_IMAGES` training images chosen by a seeded draw; the
  encoder sees the images, the decoder sees posterior samples z ~ q(z|x) of the same images
  (what it was trained on), computed with the fp32 encoder.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgevae.runtime import contract, manifest as schema
from edgevae.runtime.bundle import read_bundle, sha256_file
from edgevae.runtime.errors import ExportError, InputError
from edgevae.runtime.images import psnr
from edgevae.runtime.units import bits_per_dim
from edgevae.training.onnxgraph import save_checked, set_metadata_props
from edgevae.training.staging import check_target, staged_bundle

#: Precisions a bundle can have; ``fp32`` is the exporter's own output.
PRECISIONS = ("fp32", "int8", "fp16")

#: Training images used to calibrate int8 activation ranges.
CALIBRATION_IMAGES = 1024
#: Images per calibration batch.
CALIBRATION_BATCH = 64
#: Seed of the calibration draw and of the noise in the quality check: same inputs, same bundle.
SEED = 0
#: Test images the export-time check runs on (the benchmark uses the whole test set).
CHECK_IMAGES = 2000
#: Images per session call in the check.
CHECK_BATCH = 500

#: Operator types quantized to int8 (see the module docstring).
INT8_OPS = ["Conv", "Relu", "DepthToSpace", "Resize", "Gemm"]
#: Operator types whose outputs stay float in the int8 graphs.
INT8_FLOAT_OUTPUTS = ["Gemm"]
#: Operator types computed in fp16; everything else (normalization, likelihood head, pixel
#: rounding) stays fp32, where a half-precision rounding would move pixels by whole levels.
FP16_OPS = {"Conv", "Gemm", "Relu", "DepthToSpace", "Reshape", "Flatten"}


@dataclass(frozen=True)
class Bounds:
    """What a variant may lose against its fp32 graphs on test images."""

    #: Reconstruction PSNR drop, dB.
    max_psnr_loss_db: float
    #: Negative-ELBO increase, bits/dim.
    max_nelbo_increase_bpd: float
    #: Max abs difference of any float output; None: not bounded per element (int8).
    max_abs_diff: float | None


#: Bounds per precision, enforced at export. int8's PSNR bound is the issue's shipping bar;
#: fp16's are a few times what fp16 rounding costs on the Fashion-MNIST model.
BOUNDS = {
    "int8": Bounds(max_psnr_loss_db=0.3, max_nelbo_increase_bpd=0.03, max_abs_diff=None),
    "fp16": Bounds(max_psnr_loss_db=0.05, max_nelbo_increase_bpd=0.005, max_abs_diff=0.05),
}


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise InputError."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


# -- calibration ----------------------------------------------------------------------------


def calibration_images(train_images: np.ndarray, count: int = CALIBRATION_IMAGES, seed: int = SEED) -> np.ndarray:
    """A seeded draw of ``count`` training images (all of them if there are fewer)."""
    if len(train_images) == 0:
        raise InputError("int8 calibration needs training images, got none")
    take = min(count, len(train_images))
    order = np.random.default_rng(seed).choice(len(train_images), size=take, replace=False)
    return np.ascontiguousarray(train_images[np.sort(order)])


def _calibration_reader(name: str, inputs: np.ndarray) -> Any:
    """A CalibrationDataReader feeding ``inputs`` to the graph input ``name`` in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        """Yields {name: batch} for consecutive batches, then None."""

        def __init__(self) -> None:
            self._batches: Iterator[dict[str, np.ndarray]] = iter(
                [{name: inputs[i : i + CALIBRATION_BATCH]} for i in range(0, len(inputs), CALIBRATION_BATCH)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return BatchReader()


def posterior_samples(model: Any, images: np.ndarray, seed: int = SEED) -> np.ndarray:
    """z = mean + exp(logvar / 2) * eps for each image, from ``model`` (an EdgeVAE); float32 (N, D)."""
    mean, logvar = model.encode(images)
    eps = np.random.default_rng(seed).standard_normal(mean.shape, dtype=np.float32)
    return (mean + np.exp(0.5 * logvar) * eps).astype(np.float32)


# -- conversions ----------------------------------------------------------------------------


def _quantize_int8(source: Path, target: Path, input_name: str, inputs: np.ndarray, keep_last_conv: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    import onnx

    convs = [node.name for node in onnx.load(str(source)).graph.node if node.op_type == "Conv"]
    # Graph order is topological (ONNX requires it), so the last Conv is the one that
    # produces the likelihood parameters.
    exclude = convs[-1:] if keep_last_conv else []
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the quantizer logs a generic "consider pre-processing" tip
    try:
        quantize_static(
            str(source), str(target), _calibration_reader(input_name, inputs),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=INT8_OPS, nodes_to_exclude=exclude,
            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"OpTypesToExcludeOutputQuantization": INT8_FLOAT_OUTPUTS},
        )
    finally:
        quiet.setLevel(level)


def _convert_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(source))
    blocked = sorted({node.op_type for node in model.graph.node} - FP16_OPS)
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    # The converter appends the Casts it adds around blocked nodes at the end of the node
    # list; ONNX requires topological order.
    OnnxModel.graph_topological_sort(converted.graph, is_deterministic=True)
    # It also leaves fp16 type annotations on constants it kept in fp32; annotations are
    # optional, the checker re-infers every type without them.
    del converted.graph.value_info[:]
    onnx.save_model(converted, str(target), save_as_external_data=False)


def _stamp(path: Path, precision: str) -> None:
    """Set ``edgevae.precision`` in the graph's metadata and check the file."""
    import onnx

    model = onnx.load(str(path))
    set_metadata_props(model, {**{p.key: p.value for p in model.metadata_props}, "edgevae.precision": precision})
    save_checked(model, path)


def method_of(precision: str) -> dict[str, Any]:
    """How a variant's graphs are made, as recorded in its manifest."""
    import onnxruntime

    if precision == "int8":
        return {"tool": f"onnxruntime.quantization.quantize_static {onnxruntime.__version__}", "format": "QDQ",
                "weights": "int8 per channel, reduce_range (7 bit)", "activations": "uint8",
                "calibration": f"MinMax over {CALIBRATION_IMAGES} training images (seed {SEED}); "
                               "decoder on posterior samples of the same images",
                "quantized_ops": INT8_OPS, "float_outputs": INT8_FLOAT_OUTPUTS,
                "kept_fp32": "decoder's last Conv, likelihood head, pixels"}
    return {"tool": f"onnxruntime.transformers.float16 {onnxruntime.__version__}",
            "fp16_ops": sorted(FP16_OPS), "kept_fp32": "inputs/outputs, normalization, likelihood head, pixels"}


# -- quality ----------------------------------------------------------------------------------


def bundle_quality(model: Any, images: np.ndarray, seed: int = SEED, batch: int = CHECK_BATCH) -> dict[str, float]:
    """Reconstruction PSNR (dB, mean over images) and negative ELBO (bits/dim) of an EdgeVAE.

    Computed from the graphs' outputs only: PSNR of ``decode(posterior mean)`` against the
    uint8 images; negative ELBO = -log p(x|z) + KL(q(z|x) || N(0, I)) with one seeded
    posterior sample z per image, the likelihood evaluated by the training code's
    :func:`edgevae.training.likelihood.log_prob` on the decoder's mixture outputs (the one
    definition of that formula, not a copy).
    """
    import torch

    from edgevae.training import likelihood
    from edgevae.training.model import gaussian_kl

    rng = np.random.default_rng(seed)
    psnr_sum = nats = 0.0
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        mean, logvar = model.encode(x)
        pixels = model.decode(mean)
        psnr_sum += float(psnr(x, pixels).sum())
        z = mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape, dtype=np.float32)
        params = model.likelihood(z)
        with torch.inference_mode():
            log_px = likelihood.log_prob(torch.from_numpy(x), torch.from_numpy(params.logits),
                                         torch.from_numpy(params.means), torch.from_numpy(params.log_scales))
        kl = gaussian_kl(torch.from_numpy(mean).double(), torch.from_numpy(logvar).double())
        nats += float(-log_px.double().sum()) + float(kl.sum())
    n = len(images)
    return {"psnr_db": psnr_sum / n, "nelbo_bpd": bits_per_dim(nats, n * math.prod(images.shape[1:]))}


def compare(reference: Any, variant: Any, images: np.ndarray, batch: int = CHECK_BATCH) -> dict[str, dict[str, float]]:
    """Max and RMS abs difference of every float output, variant vs reference (two EdgeVAEs).

    Both encoders see ``images``; both decoders see the reference's posterior means, so each
    graph's own error is measured. Pixels (uint8) get the same statistics, in levels.
    """
    stats: dict[str, list[float]] = {}

    def add(name: str, a: np.ndarray, b: np.ndarray) -> None:
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        entry = stats.setdefault(name, [0.0, 0.0, 0])  # max, sum of squares, count
        entry[0] = max(entry[0], float(d.max()) if d.size else 0.0)
        entry[1] += float(np.sum(d**2))
        entry[2] += d.size

    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        ref_mean, ref_logvar = reference.encode(x)
        var_mean, var_logvar = variant.encode(x)
        add("encoder.mean", ref_mean, var_mean)
        add("encoder.logvar", ref_logvar, var_logvar)
        add("decoder.pixels", reference.decode(ref_mean), variant.decode(ref_mean))
        ref_p, var_p = reference.likelihood(ref_mean), variant.likelihood(ref_mean)
        add("decoder.mixture_logits", ref_p.logits, var_p.logits)
        add("decoder.mixture_means", ref_p.means, var_p.means)
        add("decoder.mixture_log_scales", ref_p.log_scales, var_p.log_scales)
    return {name: {"max_abs": m, "rms": math.sqrt(s / max(c, 1))} for name, (m, s, c) in stats.items()}


def check_variant(reference: Any, variant: Any, precision: str, images: np.ndarray) -> dict[str, Any]:
    """The check recorded in a variant's manifest (see the module docstring); ``passed`` and
    ``failures`` say whether :data:`BOUNDS` hold."""
    bounds = BOUNDS[precision]
    diffs = compare(reference, variant, images)
    ref_q, var_q = bundle_quality(reference, images), bundle_quality(variant, images)
    psnr_loss = ref_q["psnr_db"] - var_q["psnr_db"]
    nelbo_increase = var_q["nelbo_bpd"] - ref_q["nelbo_bpd"]
    failures = []
    if not psnr_loss <= bounds.max_psnr_loss_db:
        failures.append(f"PSNR drops {psnr_loss:.3f} dB (> {bounds.max_psnr_loss_db} dB allowed)")
    if not nelbo_increase <= bounds.max_nelbo_increase_bpd:
        failures.append(f"negative ELBO rises {nelbo_increase:.4f} bits/dim "
                        f"(> {bounds.max_nelbo_increase_bpd} allowed)")
    if bounds.max_abs_diff is not None:
        for name, d in diffs.items():
            if name != "decoder.pixels" and not d["max_abs"] <= bounds.max_abs_diff:
                failures.append(f"{name} differs by {d['max_abs']:.3g} (> {bounds.max_abs_diff:g})")
    return {
        "reference": "the fp32 ONNX graphs this variant was made from (themselves checked against PyTorch: "
                     "see 'parity')",
        "images": len(images),
        "bounds": asdict(bounds),
        "diff": diffs,
        "fp32": ref_q,
        precision: var_q,
        "psnr_loss_db": psnr_loss,
        "nelbo_increase_bpd": nelbo_increase,
        "passed": not failures,
        "failures": failures,
    }


# -- bundles ----------------------------------------------------------------------------------


def make_variant(source: str | Path, target: str | Path, precision: str, train_images: np.ndarray,
                 test_images: np.ndarray, force: bool = False, enforce: bool = True) -> dict[str, Any]:
    """Write the ``precision`` variant of the fp32 bundle ``source`` into ``target``.

    ``train_images`` (uint8 (N, C, H, W)) calibrate int8 and refit the codec tables (if the
    source has them) with the variant's encoder; the first :data:`CHECK_IMAGES` of
    ``test_images`` drive the check. With ``enforce`` a check failure raises ExportError and
    nothing is written; without it the variant is written and the failures are recorded (the
    benchmark uses this to report variants that miss the bounds). Returns the manifest.
    """
    from edgevae.runtime.model import load

    check_precision(precision)
    if precision == "fp32":
        raise InputError("fp32 is the exporter's own output; a variant is int8 or fp16")
    out = Path(target)
    check_target(out, force)
    fp32 = read_bundle(source)
    if fp32.precision != "fp32":
        raise InputError(f"{fp32.path}: variants are made from an fp32 bundle, this one is {fp32.precision}")
    with staged_bundle(out, force, what=f"{precision} conversion") as staging:
        reference = load(fp32.path, threads=None)
        if precision == "int8":
            images = calibration_images(train_images)
            inputs = {contract.ENCODER.key: images, contract.DECODER.key: posterior_samples(reference, images)}
        for spec in contract.GRAPHS:
            path = staging / spec.file
            if precision == "int8":
                _quantize_int8(fp32.graph_path(spec), path, spec.inputs[0].name, inputs[spec.key],
                               keep_last_conv=spec is contract.DECODER)
            else:
                _convert_fp16(fp32.graph_path(spec), path)
            _stamp(path, precision)
        manifest = json.loads(json.dumps(fp32.manifest))  # a deep copy
        manifest.update(name=out.name, precision=precision, evaluation=None)
        manifest.pop("role", None)  # a shipped bundle's jobs are its own, not its variants'
        for spec in contract.GRAPHS:
            manifest["graphs"][spec.key]["sha256"] = sha256_file(staging / spec.file)
        if manifest.pop("codec", None) is not None:
            from edgevae.runtime.tables import bundle_levels
            from edgevae.training.codec_tables import write_codec_tables

            # The codec's tables belong to the encoder that made them: refit with this one,
            # keeping the fp32 bundle's quality levels.
            write_codec_tables(staging, manifest, train_images,
                               source={"data": manifest["training"]["data"], "split": "train"},
                               levels=bundle_levels(fp32))
        manifest["variant"] = {
            "source": {"name": fp32.name,
                       "sha256": {spec.key: fp32.manifest["graphs"][spec.key]["sha256"] for spec in contract.GRAPHS}},
            "method": method_of(precision),
        }
        manifest_path = staging / contract.MANIFEST_FILE
        manifest_path.write_bytes(schema.to_json(manifest, out / contract.MANIFEST_FILE))
        check = check_variant(reference, load(staging, threads=None), precision, test_images[:CHECK_IMAGES])
        if enforce and not check["passed"]:
            raise ExportError(f"{precision} variant fails its check: " + "; ".join(check["failures"]))
        manifest["variant"]["check"] = check
        manifest_path.write_bytes(schema.to_json(manifest, out / contract.MANIFEST_FILE))
    return manifest


def export_variant(export_fp32: Any, target: str | Path, precision: str, train_images: np.ndarray,
                   test_images: np.ndarray, force: bool = False) -> dict[str, Any]:
    """Export fp32 with ``export_fp32(folder)`` into a scratch folder, then make the variant.

    Used by ``edgevae-train export --precision``: the fp32 graphs pass their PyTorch parity
    check first, so a variant is only ever made from verified graphs.
    """
    out = Path(target)
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-fp32-", dir=out.parent))
    try:
        fp32 = scratch / out.name  # the source's recorded name is the bundle's own name
        export_fp32(fp32)
        return make_variant(fp32, out, precision, train_images, test_images, force=force)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
