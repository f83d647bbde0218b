"""Integer networks: a float VAE turned into graphs that compute with integers only.

Every engine (onnxruntime's CPU build, its WASM build, a C loop) must return the same integers
from the same bundle, so the coders' tables are the same everywhere (issue 21, Ballé et al.,
ICLR 2019 "Integer networks"). Each layer here is::

    acc = Conv/Gemm(a, W) + B              a, W, B integers: |W| <= 127, a in [0, 255] (or the input range)
    a_next = Clip(Floor(acc * 2**-s), lo, hi)       one shift s per output channel
           (the graphs compute Floor(Clip(acc * 2**-s, lo, hi)), the same integers, faster)

and every output channel c satisfies ``sum|W[c]| * max_input + |B[c]| < 2**24``
(:func:`check_bounds`), so every partial sum, in any order, is an integer float32 holds exactly:
float32 Conv/Gemm then *is* integer arithmetic on every engine. ``Mul`` by a power of two and
``Floor`` are exact too. Rounding to nearest is folded into the bias (``B + 2**(s-1)``); every
real-valued scale is folded into ``W`` (per-channel weight grid ``2**s * s_out / s_in``), so only
power-of-two rescaling remains. ``s`` is the largest shift for which the weights fit in 7 bits
and the bound holds (negative only for a channel whose activation grid is far coarser than its
input's: the Mul is then by 2**|s|, still exact).

The real value of an activation is ``scale[c] * a`` (``scale``: calibrated per channel so that
the channel's activations fill 0..255); the graph inputs and outputs are the contract's grids
(:mod:`edgevae.runtime.contract`)::

    encoder  images uint8 x --(2x - 255: normalized x * 255, so zero padding is the float model's)-->
             conv 3x3 ... (ReLU as Clip 0..255) --flatten--> Gemm heads
             -> mean_index = round(mean * 2**10) in [-8192, 8192]
                logvar_index = round((logvar + 24) * 64) in [0, 2048]
    decoder  latents int32 (z * 2**8) in [-2048, 2048] --Gemm, Clip 0..255--> reshape
             --(Resize nearest x2, conv 3x3, Clip)... conv 3x3, Clip--> three 1x1 heads
             -> mixture_logit_index = round(logit * 16) in [-512, 512]
                u = round(m * 2**11) in [-12288, 12288] --Gather--> mixture_mean_index = TABLE[u]
                mixture_log_scale_index = round((log_scale + 7) * 16) in [0, 128]
                pixels = (mixture_mean_index of the component with the largest logit index (the first
                          of equal ones) + 16) // 32

The float model's means are tanh(m): an integer lookup table ``TABLE[u] = round((tanh(u / 2**11) +
1) * 127.5 * 32)`` (computed once at export, shipped as integers) keeps that nonlinearity exactly
as trained (a clip of a linear head would have to relearn it), costs one Gather, and needs no
transcendental at run time; |m| > 6 is clipped because tanh(6) is already the last grid step.

Three forms of one network, which must agree to the last integer (export checks it):
:class:`IntegerVAE` (torch, for calibration and quantization-aware training, straight-through
rounding; float64 in the checks), :class:`IntegerNetwork` with :func:`reference_encode` /
:func:`reference_decode` (numpy int64: the specification, and the reference a C program or a
parity benchmark follows), and the ONNX graphs of :func:`encoder_graph` / :func:`decoder_graph`.
Supported models: ``res_blocks == 0`` and ``upsample == "nearest"`` (every shipped bundle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgevae.runtime import contract
from edgevae.runtime.errors import ExportError, InputError
from edgevae.training.model import VAE, ModelConfig

#: Largest weight magnitude (7 bits + sign: int8 storage, and room for the bound).
WEIGHT_MAX = 127
#: Activations between layers are 0 .. ACTIVATION_MAX (ReLU outputs, 8 bits).
ACTIVATION_MAX = 255
#: Largest magnitude of the encoder's input: 2 * pixel - 255.
IMAGE_MAX = 255
#: The decoder's latent input range (contract: z * 2**8, |z| <= 8).
LATENT_MAX = contract.index_range("latents")[1]
#: Every partial sum of a layer stays below this (float32 represents every integer up to it).
LIMIT = contract.INTEGER_EXACT_LIMIT
#: Range of the per-channel shift search.
SHIFT_RANGE = (-24, 40)
#: The mixture-mean head's pre-tanh output grid: u = m * 2**MEAN_PRE_BITS, |m| <= MEAN_PRE_LIMIT.
MEAN_PRE_BITS = 11
MEAN_PRE_LIMIT = 6
MEAN_PRE_MAX = MEAN_PRE_LIMIT << MEAN_PRE_BITS


# -- the grids of the graph inputs and outputs (from the contract) ------------------------------

def _grid(name: str, scale: float, offset: float = 0.0) -> dict[str, Any]:
    low, high = contract.index_range(name)
    return {"scale": scale, "offset": offset, "low": low, "high": high}


#: Per output: index = round(value / scale + offset), clipped to [low, high]; value = (index - offset) * scale.
GRIDS = {
    "mean_index": _grid("mean_index", 2.0 ** -contract.POSTERIOR_MEAN_BITS),
    "logvar_index": _grid("logvar_index", 2.0 ** -contract.LOGVAR_BITS, -contract.LOGVAR_RANGE[0] * (1 << contract.LOGVAR_BITS)),
    "mixture_logit_index": _grid("mixture_logit_index", 1.0 / contract.LOGIT_STEPS),
    "mixture_log_scale_index": _grid("mixture_log_scale_index", 1.0 / contract.LOG_SCALE_STEPS,
                                     -contract.LOG_SCALE_RANGE[0] * contract.LOG_SCALE_STEPS),
    "mean_pre": {"scale": 2.0 ** -MEAN_PRE_BITS, "offset": 0.0, "low": -MEAN_PRE_MAX, "high": MEAN_PRE_MAX},
}


def mean_table() -> np.ndarray:
    """int64 (2 * MEAN_PRE_MAX + 1,): mixture_mean_index of u = -MEAN_PRE_MAX .. MEAN_PRE_MAX,
    round((tanh(u / 2**11) + 1) * 127.5 * 32) clipped to the contract's range. Built once at
    export (numpy's tanh; the table ships as integers, nothing is recomputed at run time)."""
    u = np.arange(-MEAN_PRE_MAX, MEAN_PRE_MAX + 1, dtype=np.float64)
    low, high = contract.index_range("mixture_mean_index")
    return np.clip(np.rint((np.tanh(u * 2.0 ** -MEAN_PRE_BITS) + 1.0) * (high / 2)), low, high).astype(np.int64)


def dequantize_posterior(mean_index: Any, logvar_index: Any) -> tuple[Any, Any]:
    """(mean, logvar) of integer posterior indices (numpy or torch)."""
    m, v = GRIDS["mean_index"], GRIDS["logvar_index"]
    return mean_index * m["scale"], (logvar_index - v["offset"]) * v["scale"]


def dequantize_mixture(logit_index: Any, mean_index: Any, log_scale_index: Any) -> tuple[Any, Any, Any]:
    """(logits, means, log_scales) in the likelihood's normalized domain, from the decoder's indices."""
    ls = GRIDS["mixture_log_scale_index"]
    means = mean_index * (1.0 / (contract.MEAN_SUBSTEPS * contract.PIXEL_SCALE)) - 1.0
    return logit_index * GRIDS["mixture_logit_index"]["scale"], means, (log_scale_index - ls["offset"]) * ls["scale"]


def latent_indices(z: Any) -> Any:
    """The decoder's int input of latents z (numpy float array): round(z * 2**8) clipped (int64)."""
    low, high = contract.index_range("latents")
    return np.clip(np.rint(np.asarray(z, dtype=np.float64) * (1 << contract.LATENT_INPUT_BITS)), low, high).astype(np.int64)


# -- straight-through rounding ----------------------------------------------------------------

def _ste(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, the gradient of ``x`` backward (exact: x + (value - x) == value here)."""
    return x + (value - x).detach() if x.requires_grad else value


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _ste(x, torch.round(x))


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    return _ste(x, torch.floor(x))


# -- one layer -----------------------------------------------------------------------------

def _rounding(shift: torch.Tensor) -> torch.Tensor:
    """2**(s-1) for s > 0 (round half up through Floor), 0 otherwise."""
    return torch.where(shift > 0, torch.pow(2.0, (shift - 1).clamp(min=0).to(torch.float64)), 0.0)


@torch.no_grad()
def choose_shifts(w_eff: torch.Tensor, b_eff: torch.Tensor, max_input: int) -> torch.Tensor:
    """Per output channel, the largest shift s in :data:`SHIFT_RANGE` with max|round(w_eff * 2**s)|
    <= 127 and sum|round(w_eff * 2**s)| * max_input + |round(b_eff * 2**s) + 2**(s-1)| < 2**24.
    ``w_eff`` (O, ...) float64: real weights in units of (output grid / input grid)."""
    w = w_eff.flatten(1).abs()
    amax, asum = w.amax(1), w.sum(1)
    start = torch.minimum(torch.log2(WEIGHT_MAX / amax.clamp(min=1e-30)),
                          torch.log2((LIMIT / 2) / (asum * max_input + b_eff.abs()).clamp(min=1e-30)))
    shift = torch.floor(start).clamp(*SHIFT_RANGE).to(torch.int64) + 1
    for _ in range(SHIFT_RANGE[1] - SHIFT_RANGE[0] + 2):
        scale = torch.pow(2.0, shift.to(torch.float64))
        wi = torch.round(w * scale[:, None])
        bi = torch.round(b_eff * scale) + _rounding(shift)
        bad = (wi.amax(1) > WEIGHT_MAX) | (wi.sum(1) * max_input + bi.abs() >= LIMIT)
        bad &= shift > SHIFT_RANGE[0]
        if not bad.any():
            return shift
        shift = shift - bad.to(torch.int64)
    return shift


def quantize_layer(weight: torch.Tensor, bias: torch.Tensor, in_scale: torch.Tensor, out_scale: torch.Tensor,
                   offset: float, max_input: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer (weight, bias, shift) of a layer y = W x + b whose input is ``in_scale`` (per input
    channel) times integers and whose output index is y / ``out_scale`` (per output channel) +
    ``offset``. Straight-through: gradients reach ``weight`` and ``bias``. float64."""
    o = weight.shape[0]
    in_shape = (1, -1) + (1,) * (weight.dim() - 2)
    w_eff = weight.to(torch.float64) * in_scale.to(torch.float64).view(in_shape) / out_scale.to(torch.float64).view(
        (o,) + (1,) * (weight.dim() - 1))
    b_eff = bias.to(torch.float64) / out_scale.to(torch.float64) + offset
    shift = choose_shifts(w_eff.detach(), b_eff.detach(), max_input)
    scale = torch.pow(2.0, shift.to(torch.float64))
    w_int = round_ste(w_eff * scale.view((o,) + (1,) * (weight.dim() - 1)))
    b_int = round_ste(b_eff * scale) + _rounding(shift)
    return w_int, b_int, shift


@dataclass
class IntegerLayer:
    """One integer layer: ``Clip(Floor((op(a, weight) + bias) * 2**-shift), low, high)``."""

    name: str
    op: str  # "conv" (3x3 or 1x1, zero padding) or "gemm"
    weight: np.ndarray  # int64 (O, I, kh, kw) or (O, I)
    bias: np.ndarray  # int64 (O,), rounding 2**(s-1) included
    shift: np.ndarray  # int64 (O,)
    low: int
    high: int
    max_input: int
    stride: int = 1
    padding: int = 0

    def worst_sums(self) -> np.ndarray:
        """Per output channel, the largest |partial sum| any order of summation can reach."""
        return np.abs(self.weight).reshape(len(self.weight), -1).sum(1) * self.max_input + np.abs(self.bias)


@dataclass
class IntegerNetwork:
    """The integer VAE as numpy int64 arrays: what the graphs compute, layer by layer."""

    config: ModelConfig
    encoder: list[IntegerLayer]  # convolutions, then the mean and logvar heads (gemm)
    decoder: list[IntegerLayer]  # project (gemm), convolutions, then the logit, mean-pre, log-scale heads
    upsample_before: list[bool]  # per decoder convolution (heads excluded): Resize x2 before it
    table: np.ndarray = field(default_factory=mean_table)

    def layers(self) -> list[IntegerLayer]:
        return self.encoder + self.decoder


def check_bounds(network: IntegerNetwork | list[IntegerLayer]) -> None:
    """ExportError (one line naming the layer and channel) if a weight exceeds 127 or a channel's
    worst partial sum reaches 2**24 (float32 would then round it on some engine); ``network`` or
    a list of layers (an integer context net's)."""
    for layer in network if isinstance(network, list) else network.layers():
        big = np.abs(layer.weight).reshape(len(layer.weight), -1).max(1)
        sums = layer.worst_sums()
        for c in range(len(layer.weight)):
            if big[c] > WEIGHT_MAX:
                raise ExportError(f"{layer.name} channel {c}: weight {int(big[c])} exceeds {WEIGHT_MAX}")
            if sums[c] >= LIMIT:
                raise ExportError(f"{layer.name} channel {c}: sum|W| * {layer.max_input} + |B| = {int(sums[c])} "
                                  f">= 2**24, float32 would round its partial sums")


# -- the numpy int64 reference ----------------------------------------------------------------

def _conv_int(a: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    if padding:
        a = np.pad(a, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(a, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", win, w, optimize=True)


def reference_layer(layer: IntegerLayer, a: np.ndarray) -> np.ndarray:
    """One layer in int64: the exact integers every engine must produce."""
    a = np.asarray(a, dtype=np.int64)
    if layer.op == "conv":
        acc = _conv_int(a, layer.weight, layer.stride, layer.padding) + layer.bias[None, :, None, None]
        shift = layer.shift[None, :, None, None]
    else:
        acc = a @ layer.weight.T + layer.bias[None, :]
        shift = layer.shift[None, :]
    out = (acc << np.maximum(-shift, 0)) >> np.maximum(shift, 0)  # floor(acc * 2**-s): arithmetic shifts
    return np.clip(out, layer.low, layer.high)


def reference_encode(network: IntegerNetwork, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, C, H, W) -> (mean_index, logvar_index) int64 (N, latent)."""
    a = 2 * np.asarray(images, dtype=np.int64) - IMAGE_MAX
    *convs, mean_head, logvar_head = network.encoder
    for layer in convs:
        a = reference_layer(layer, a)
    a = a.reshape(len(a), -1)
    return reference_layer(mean_head, a), reference_layer(logvar_head, a)


def reference_decode(network: IntegerNetwork, latents: np.ndarray) -> dict[str, np.ndarray]:
    """int latents (N, latent) in [-2048, 2048] -> the decoder's outputs by contract name (int64;
    ``pixels`` uint8), each (N, K, C, H, W) or (N, C, H, W)."""
    project, *convs = network.decoder[:-3]
    logit_head, mean_head, scale_head = network.decoder[-3:]
    a = reference_layer(project, np.asarray(latents, dtype=np.int64))
    a = a.reshape((len(a),) + network.config.bottom_shape)
    for layer, up in zip(convs, network.upsample_before):
        if up:
            a = a.repeat(2, axis=2).repeat(2, axis=3)
        a = reference_layer(layer, a)
    n, (k, (c, h, w)) = len(a), (network.config.mixture_components, network.config.image_shape)
    logits = reference_layer(logit_head, a).reshape(n, k, c, h, w)
    means = network.table[reference_layer(mean_head, a) + MEAN_PRE_MAX].reshape(n, k, c, h, w)
    scales = reference_layer(scale_head, a).reshape(n, k, c, h, w)
    heaviest = np.take_along_axis(means, logits.argmax(axis=1)[:, None], axis=1)[:, 0]
    pixels = ((heaviest + contract.MEAN_SUBSTEPS // 2) // contract.MEAN_SUBSTEPS).astype(np.uint8)
    return {"pixels": pixels, "mixture_logit_index": logits, "mixture_mean_index": means,
            "mixture_log_scale_index": scales}


def _layers_of_graph(path: Any) -> tuple[list[IntegerLayer], list[bool], np.ndarray | None]:
    """The integer layers of one graph built by :func:`encoder_graph` / :func:`decoder_graph`, in
    order, whether a Resize came before each, and the mean table if the graph has one."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    produced = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant(name: str) -> np.ndarray:
        node = produced.get(name)
        return inits[node.input[0] if node is not None and node.op_type == "Cast" else name]

    layers, resized, pending, table = [], [], False, None
    for node in graph.node:
        if node.op_type == "Resize":
            pending = True
        elif node.op_type == "Gather":
            table = constant(node.input[0]).astype(np.int64)
        elif node.op_type in ("Conv", "Gemm"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            mul = consumers[node.output[0]][0]
            clip = consumers[mul.output[0]][0]
            weight = constant(node.input[1]).astype(np.int64)
            shift = -np.log2(inits[mul.input[1]].astype(np.float64).reshape(-1))
            layers.append(IntegerLayer(
                name=produced[node.input[1]].input[0].rsplit(".weight", 1)[0], op=node.op_type.lower(),
                weight=weight, bias=constant(node.input[2]).astype(np.int64), shift=np.rint(shift).astype(np.int64),
                low=int(inits[clip.input[1]].item()), high=int(inits[clip.input[2]].item()), max_input=ACTIVATION_MAX,
                stride=int(attrs.get("strides", [1])[0]), padding=int(attrs.get("pads", [0])[0])))
            resized.append(pending)
            pending = False
    return layers, resized, table


def load_network(bundle_dir: Any) -> IntegerNetwork:
    """The :class:`IntegerNetwork` of an integer bundle, read from its ONNX graphs alone (no run
    folder or checkpoint): what a C program or a parity benchmark runs :func:`reference_encode` /
    :func:`reference_decode` with."""
    import json
    from pathlib import Path

    folder = Path(bundle_dir)
    manifest = json.loads((folder / contract.MANIFEST_FILE).read_text())
    if manifest.get("arithmetic") != contract.ARITHMETIC_INTEGER:
        raise InputError(f"{folder}: not an integer bundle (model.json arithmetic)")
    config = ModelConfig.from_dict(manifest["training"]["model_config"])
    encoder, _, _ = _layers_of_graph(folder / contract.INTEGER_ENCODER.file)
    decoder, resized, table = _layers_of_graph(folder / contract.INTEGER_DECODER.file)
    encoder[0].max_input, decoder[0].max_input = IMAGE_MAX, LATENT_MAX
    if table is None or len(encoder) < 3 or len(decoder) < 4:
        raise InputError(f"{folder}: graphs are not integer graphs of training/integer.py")
    return IntegerNetwork(config, encoder, decoder, resized[1:-3], table)


# -- the torch form, for calibration and quantization-aware training ----------------------------

def check_supported(config: ModelConfig) -> None:
    """InputError unless the model has the layer types integer graphs are built from."""
    if config.res_blocks or config.upsample != "nearest":
        raise InputError(f"integer bundles need res_blocks 0 and upsample 'nearest' (the shipped models), got "
                         f"res_blocks {config.res_blocks}, upsample {config.upsample!r}")


class IntegerVAE(nn.Module):
    """A float VAE's parameters computed as the integer network: forward values are the exact
    integers of the graphs (in float tensors), gradients pass rounding straight through.

    Buffers ``scale_<i>`` hold the real value of one activation step per channel of each hidden
    layer's output (calibrated by :meth:`calibrate`, then fixed). float32 is for training; the
    checks run float64, where any summation order is exact for these magnitudes.
    """

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        check_supported(vae.config)
        self.vae = vae
        self.enc_convs = [m for m in vae.encoder.features if isinstance(m, nn.Conv2d)]
        body = list(vae.decoder.body)
        self.dec_convs: list[nn.Conv2d] = []
        self.upsample_before: list[bool] = []
        pending = False
        for m in body:
            if isinstance(m, nn.Upsample):
                pending = True
            elif isinstance(m, nn.Conv2d):
                self.dec_convs.append(m)
                self.upsample_before.append(pending)
                pending = False
        # plain lists: the convolutions are registered once, inside self.vae
        self.heads = [self.dec_convs.pop()]
        self.upsample_before.pop()
        widths = [m.out_channels for m in self.enc_convs] + [vae.config.bottom_shape[0]] + [
            m.out_channels for m in self.dec_convs]
        for i, width in enumerate(widths):
            self.register_buffer(f"scale_{i}", torch.ones(width, dtype=torch.float64))
        self.register_buffer("table", torch.from_numpy(mean_table().astype(np.float64)))

    @property
    def config(self) -> ModelConfig:
        return self.vae.config

    def scales(self) -> list[torch.Tensor]:
        n = len(self.enc_convs) + 1 + len(self.dec_convs)
        return [getattr(self, f"scale_{i}") for i in range(n)]

    def _layer(self, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, in_scale: torch.Tensor,
               out_scale: torch.Tensor, offset: float, max_input: int, low: int, high: int,
               stride: int = 1, padding: int = 0) -> torch.Tensor:
        w, b, shift = quantize_layer(weight, bias, in_scale, out_scale, offset, max_input)
        w, b = w.to(a.dtype), b.to(a.dtype)
        acc = F.conv2d(a, w, b, stride=stride, padding=padding) if w.dim() == 4 else F.linear(a, w, b)
        step = torch.pow(2.0, -shift.to(torch.float64)).to(a.dtype)
        step = step.view(1, -1, 1, 1) if w.dim() == 4 else step.view(1, -1)
        return floor_ste(acc * step).clamp(low, high)

    def _out_scale(self, grid: str, channels: int, like: torch.Tensor) -> torch.Tensor:
        return torch.full((channels,), GRIDS[grid]["scale"], dtype=torch.float64, device=like.device)

    def encode_indices(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, C, H, W) -> (mean_index, logvar_index) (N, D), integers in ``dtype``."""
        scales = self.scales()
        a = images.to(dtype) * 2 - IMAGE_MAX
        in_scale = torch.full((a.shape[1],), 1.0 / IMAGE_MAX, dtype=torch.float64, device=a.device)
        max_input = IMAGE_MAX
        for conv, out_scale in zip(self.enc_convs, scales):
            a = self._layer(a, conv.weight, conv.bias, in_scale, out_scale, 0.0, max_input, 0, ACTIVATION_MAX,
                            conv.stride[0], conv.padding[0])
            in_scale, max_input = out_scale, ACTIVATION_MAX
        hw = a.shape[2] * a.shape[3]
        a, in_scale = a.flatten(1), in_scale.repeat_interleave(hw)
        head, d = self.vae.encoder.head, self.config.latent_dim
        out = []
        for name, rows in (("mean_index", slice(0, d)), ("logvar_index", slice(d, 2 * d))):
            g = GRIDS[name]
            out.append(self._layer(a, head.weight[rows], head.bias[rows], in_scale, self._out_scale(name, d, a),
                                   g["offset"], max_input, g["low"], g["high"]))
        return out[0], out[1]

    def decode_indices(self, latents: torch.Tensor, dtype: torch.dtype = torch.float32
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """int latents (N, D) -> (logit, mean, log-scale) indices (N, K, C, H, W), integers in ``dtype``."""
        scales = self.scales()[len(self.enc_convs):]
        a = latents.to(dtype)
        in_scale = torch.full((a.shape[1],), 2.0 ** -contract.LATENT_INPUT_BITS, dtype=torch.float64, device=a.device)
        project = self.vae.decoder.project[0]
        bottom = self.config.bottom_shape
        hw = bottom[1] * bottom[2]
        a = self._layer(a, project.weight, project.bias, in_scale, scales[0].repeat_interleave(hw), 0.0, LATENT_MAX,
                        0, ACTIVATION_MAX)
        a, in_scale = a.unflatten(1, bottom), scales[0]
        for conv, up, out_scale in zip(self.dec_convs, self.upsample_before, scales[1:]):
            if up:
                a = a.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
            a = self._layer(a, conv.weight, conv.bias, in_scale, out_scale, 0.0, ACTIVATION_MAX, 0, ACTIVATION_MAX,
                            conv.stride[0], conv.padding[0])
            in_scale = out_scale
        k, (c, h, w) = self.config.mixture_components, self.config.image_shape
        rows = k * c
        out = []
        for i, name in enumerate(("mixture_logit_index", "mean_pre", "mixture_log_scale_index")):
            g = GRIDS[name]
            part = slice(i * rows, (i + 1) * rows)
            out.append(self._layer(a, self.heads[0].weight[part], self.heads[0].bias[part], in_scale,
                                   self._out_scale(name, rows, a), g["offset"], ACTIVATION_MAX, g["low"], g["high"]))
        u = out[1]
        table = self.table.to(dtype)[(u.detach() + MEAN_PRE_MAX).long()]
        smooth = (torch.tanh(u * 2.0 ** -MEAN_PRE_BITS) + 1.0) * (contract.index_range("mixture_mean_index")[1] / 2)
        means = _ste(smooth, table) if u.requires_grad else table
        n = len(a)
        return tuple(t.reshape(n, k, c, h, w) for t in (out[0], means, out[2]))  # type: ignore[return-value]

    @torch.no_grad()
    def network(self) -> IntegerNetwork:
        """The numpy int64 form of the current weights (the same :func:`quantize_layer` as forward)."""
        scales = [s.detach().cpu() for s in self.scales()]
        vae = self.vae
        enc: list[IntegerLayer] = []

        def layer(name: str, weight: torch.Tensor, bias: torch.Tensor, in_scale: torch.Tensor, out_scale: torch.Tensor,
                  offset: float, max_input: int, low: int, high: int, op: str, stride: int = 1,
                  padding: int = 0) -> IntegerLayer:
            w, b, s = quantize_layer(weight.detach().cpu(), bias.detach().cpu(), in_scale, out_scale, offset, max_input)
            return IntegerLayer(name, op, w.numpy().astype(np.int64), b.numpy().astype(np.int64),
                                s.numpy().astype(np.int64), int(low), int(high), int(max_input), stride, padding)

        in_scale = torch.full((self.config.image_shape[0],), 1.0 / IMAGE_MAX, dtype=torch.float64)
        max_input = IMAGE_MAX
        for i, (conv, out_scale) in enumerate(zip(self.enc_convs, scales)):
            enc.append(layer(f"encoder.conv{i}", conv.weight, conv.bias, in_scale, out_scale, 0.0, max_input, 0,
                             ACTIVATION_MAX, "conv", conv.stride[0], conv.padding[0]))
            in_scale, max_input = out_scale, ACTIVATION_MAX
        c, h, w = self.config.image_shape
        factor = 2 ** (len(self.enc_convs) - 1)
        in_scale = in_scale.repeat_interleave((h // factor) * (w // factor))
        d, head = self.config.latent_dim, vae.encoder.head
        for name, rows in (("mean_index", slice(0, d)), ("logvar_index", slice(d, 2 * d))):
            g = GRIDS[name]
            enc.append(layer(f"encoder.{name}", head.weight[rows], head.bias[rows], in_scale,
                             torch.full((d,), g["scale"], dtype=torch.float64), g["offset"], max_input, g["low"],
                             g["high"], "gemm"))
        dec_scales = scales[len(self.enc_convs):]
        bottom = self.config.bottom_shape
        project = vae.decoder.project[0]
        dec = [layer("decoder.project", project.weight, project.bias,
                     torch.full((d,), 2.0 ** -contract.LATENT_INPUT_BITS, dtype=torch.float64),
                     dec_scales[0].repeat_interleave(bottom[1] * bottom[2]), 0.0, LATENT_MAX, 0, ACTIVATION_MAX, "gemm")]
        in_scale = dec_scales[0]
        for i, (conv, out_scale) in enumerate(zip(self.dec_convs, dec_scales[1:])):
            dec.append(layer(f"decoder.conv{i}", conv.weight, conv.bias, in_scale, out_scale, 0.0, ACTIVATION_MAX, 0,
                             ACTIVATION_MAX, "conv", conv.stride[0], conv.padding[0]))
            in_scale = out_scale
        rows = self.config.mixture_components * c
        for i, name in enumerate(("mixture_logit_index", "mean_pre", "mixture_log_scale_index")):
            g = GRIDS[name]
            part = slice(i * rows, (i + 1) * rows)
            dec.append(layer(f"decoder.{name.replace('mixture_', '').replace('_index', '')}_head",
                             self.heads[0].weight[part], self.heads[0].bias[part], in_scale,
                             torch.full((rows,), g["scale"], dtype=torch.float64), g["offset"], ACTIVATION_MAX,
                             g["low"], g["high"], "conv", 1, 0))
        return IntegerNetwork(self.config, enc, dec, list(self.upsample_before),
                              self.table.detach().cpu().numpy().astype(np.int64))

    # -- calibration ------------------------------------------------------------------------

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, latents: torch.Tensor, quantile: float = 0.9999) -> None:
        """Set every hidden layer's activation step so that the ``quantile`` of its channel's
        float activations (encoder on ``images``, decoder on ``latents``) maps to 255."""
        from edgevae.training.likelihood import normalize

        acts: list[torch.Tensor] = []
        a = normalize(images)
        for m in self.vae.encoder.features:
            a = m(a)
            if isinstance(m, nn.ReLU):
                acts.append(a)
        a = self.vae.decoder.project(latents).unflatten(1, self.config.bottom_shape)
        acts.append(a)
        body = list(self.vae.decoder.body)
        for i, m in enumerate(body[:-1]):
            a = m(a)
            if isinstance(m, nn.ReLU):
                acts.append(a)
        set_activation_steps(acts, self.scales(), quantile)


@torch.no_grad()
def set_activation_steps(acts: list[torch.Tensor], scales: list[torch.Tensor], quantile: float) -> None:
    """Per channel of each hidden layer's float activations (N, C, ...), the step that maps their
    ``quantile`` to 255, into the matching ``scales`` buffer (a dead channel takes the layer's median)."""
    for i, (act, buf) in enumerate(zip(acts, scales)):
        per_channel = act.transpose(0, 1).flatten(1).to(torch.float64)
        if per_channel.shape[1] > 1 << 20:  # torch.quantile's limit is 2**24 values; a draw suffices
            keep = torch.randperm(per_channel.shape[1], generator=torch.Generator().manual_seed(i))[: 1 << 20]
            per_channel = per_channel[:, keep]
        top = torch.quantile(per_channel, quantile, dim=1)
        fallback = top[top > 0].median() if (top > 0).any() else torch.tensor(1.0, dtype=torch.float64)
        buf.copy_(torch.where(top > 0, top, fallback) / ACTIVATION_MAX)


# -- ONNX graphs -------------------------------------------------------------------------------

class _Graph:
    """A small builder: unique names, initializers, nodes."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        # np.array, not np.ascontiguousarray: that makes a 0-d scalar 1-d, and Clip wants scalar bounds
        self.inits.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def node(self, op: str, inputs: list[str], stem: str | None = None, outputs: list[str] | None = None,
             **attrs: Any) -> str:
        from onnx import helper

        outputs = outputs or [self.name(stem or op.lower())]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.name(op), **attrs))
        return outputs[0]

    def as_float(self, stem: str, array: np.ndarray, dtype: Any) -> str:
        """An integer constant stored as ``dtype`` and Cast to float32 (folded when the session loads)."""
        from onnx import TensorProto

        return self.node("Cast", [self.const(stem, array.astype(dtype))], stem + "_f", to=TensorProto.FLOAT)

    def layer(self, layer: IntegerLayer, a: str) -> str:
        w = self.as_float(layer.name + ".weight", layer.weight, np.int8)
        b = self.as_float(layer.name + ".bias", layer.bias, np.int32)
        if layer.op == "conv":
            k = layer.weight.shape[2:]
            acc = self.node("Conv", [a, w, b], layer.name, kernel_shape=list(k), strides=[layer.stride] * 2,
                            pads=[layer.padding] * 4)
            step_shape: tuple[int, ...] = (1, len(layer.weight), 1, 1)
        else:
            acc = self.node("Gemm", [a, w, b], layer.name, transB=1)
            step_shape = (1, len(layer.weight))
        step = self.const(layer.name + ".step", np.ldexp(1.0, -layer.shift).astype(np.float32).reshape(step_shape))
        # Floor(Clip(y, lo, hi)) == Clip(Floor(y), lo, hi) for integer lo, hi; in this order onnxruntime
        # folds the Mul into the Conv (an exact power-of-two scaling of weights and bias) and fuses the
        # Clip as the Conv's activation, leaving one extra elementwise op (Floor) per layer.
        y = self.node("Clip", [self.node("Mul", [acc, step]), self.const("low", np.array(layer.low, np.float32)),
                               self.const("high", np.array(layer.high, np.float32))])
        return self.node("Floor", [y])

    def model(self, inputs: list[Any], outputs: list[Any], doc: str, props: dict[str, str]) -> Any:
        from onnx import helper

        graph = helper.make_graph(self.nodes, doc, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", contract.OPSET)],
                                  producer_name="edgevae.training.integer")
        model.ir_version = 8
        model.doc_string = doc
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model


def _value_info(spec: contract.TensorSpec, dims: dict[str, int]) -> Any:
    from onnx import helper

    elem = {"uint8": 2, "int32": 6, "float32": 1}[spec.dtype]
    return helper.make_tensor_value_info(spec.name, elem, spec.resolve(dims))


def _dims(network: IntegerNetwork) -> dict[str, int]:
    cfg = network.config
    return contract.dims_of(cfg.image_shape, cfg.latent_dim, cfg.mixture_components)


def encoder_graph(network: IntegerNetwork, props: dict[str, str] | None = None) -> Any:
    """The ModelProto of encoder.onnx (contract.INTEGER_ENCODER)."""
    from onnx import TensorProto

    g, spec, dims = _Graph(), contract.INTEGER_ENCODER, _dims(network)
    a = g.node("Cast", [spec.inputs[0].name], "image", to=TensorProto.FLOAT)
    a = g.node("Add", [g.node("Mul", [a, g.const("two", np.array(2.0, np.float32))]),
                       g.const("minus255", np.array(-float(IMAGE_MAX), np.float32))])
    *convs, mean_head, logvar_head = network.encoder
    for layer in convs:
        a = g.layer(layer, a)
    a = g.node("Reshape", [a, g.const("flat", np.array([0, -1], np.int64))], "flat")
    for head, out in ((mean_head, spec.outputs[0]), (logvar_head, spec.outputs[1])):
        g.node("Cast", [g.layer(head, a)], outputs=[out.name], to=TensorProto.INT32)
    return g.model([_value_info(t, dims) for t in spec.inputs], [_value_info(t, dims) for t in spec.outputs],
                   "edgevae integer encoder: see model.json and training/integer.py", props or {})


def decoder_graph(network: IntegerNetwork, props: dict[str, str] | None = None) -> Any:
    """The ModelProto of decoder.onnx (contract.INTEGER_DECODER)."""
    from onnx import TensorProto

    g, spec, dims = _Graph(), contract.INTEGER_DECODER, _dims(network)
    k, (c, h, w) = network.config.mixture_components, network.config.image_shape
    project, *convs = network.decoder[:-3]
    logit_head, mean_head, scale_head = network.decoder[-3:]
    a = g.node("Cast", [spec.inputs[0].name], "latent", to=TensorProto.FLOAT)
    a = g.layer(project, a)
    a = g.node("Reshape", [a, g.const("bottom", np.array((-1,) + network.config.bottom_shape, np.int64))])
    for layer, up in zip(convs, network.upsample_before):
        if up:
            a = g.node("Resize", [a, "", g.const("x2", np.array([1, 1, 2, 2], np.float32))], "up", mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        a = g.layer(layer, a)
    mixture = g.const("mixture", np.array([-1, k, c, h, w], np.int64))
    names = {t.name: t.name for t in spec.outputs}
    logits = g.node("Reshape", [g.layer(logit_head, a), mixture])
    g.node("Cast", [logits], outputs=[names["mixture_logit_index"]], to=TensorProto.INT32)
    u = g.node("Cast", [g.node("Add", [g.layer(mean_head, a), g.const("u0", np.array(float(MEAN_PRE_MAX), np.float32))])],
               "u", to=TensorProto.INT64)
    table = g.node("Cast", [g.const("mean_table", network.table.astype(np.int16))], "table", to=TensorProto.INT32)
    means = g.node("Reshape", [g.node("Gather", [table, u], axis=0), mixture], outputs=[names["mixture_mean_index"]])
    scales = g.node("Reshape", [g.layer(scale_head, a), mixture])
    g.node("Cast", [scales], outputs=[names["mixture_log_scale_index"]], to=TensorProto.INT32)
    heaviest = g.node("ArgMax", [logits], "heaviest", axis=1, keepdims=1, select_last_index=0)
    mean = g.node("GatherElements", [means, heaviest], axis=1)
    half = g.const("half", np.array(contract.MEAN_SUBSTEPS // 2, np.int32))
    level = g.node("Div", [g.node("Add", [mean, half]), g.const("substeps", np.array(contract.MEAN_SUBSTEPS, np.int32))])
    level = g.node("Reshape", [level, g.const("image", np.array([-1, c, h, w], np.int64))])
    g.node("Cast", [level], outputs=[names["pixels"]], to=TensorProto.UINT8)
    return g.model([_value_info(t, dims) for t in spec.inputs], [_value_info(t, dims) for t in spec.outputs],
                   "edgevae integer decoder: see model.json and training/integer.py", props or {})


# -- validation ------------------------------------------------------------------------------

def _edge_images(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    c, h, w = shape
    return np.concatenate([np.zeros((1, c, h, w), np.uint8), np.full((1, c, h, w), 255, np.uint8),
                           rng.integers(0, 256, (5, c, h, w), dtype=np.uint8),
                           (rng.random((2, c, h, w)) < 0.5).astype(np.uint8) * 255])


def _edge_latents(dim: int, rng: np.random.Generator) -> np.ndarray:
    low, high = contract.index_range("latents")
    return np.concatenate([np.zeros((1, dim), np.int32), np.full((1, dim), low, np.int32), np.full((1, dim), high, np.int32),
                           rng.choice(np.array([low, high], np.int32), (2, dim)),
                           rng.integers(low, high + 1, (4, dim), dtype=np.int32),
                           np.rint(rng.standard_normal((4, dim)) * 256).astype(np.int32)])


def check_graphs(network: IntegerNetwork, folder: Any, images: np.ndarray, seed: int = 0,
                 model: IntegerVAE | None = None) -> dict[str, Any]:
    """Validate encoder.onnx and decoder.onnx in ``folder`` like optimum: names, then dtypes and
    shapes against the integer contract, then EXACT equality of ONNX Runtime's outputs with
    :func:`reference_encode` / :func:`reference_decode` on ``images`` (real ones), edge images
    (all 0, all 255, noise, salt and pepper) and edge latents (0, +-2048, random, N(0, I)), at
    several batch sizes; also with ``model``'s float64 torch forward when given. Collects every
    failure, then raises ExportError. Returns the record for the manifest's ``parity``."""
    from pathlib import Path

    from edgevae.runtime.model import new_session

    check_bounds(network)
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    dims = _dims(network)
    failures: list[str] = []
    compared = {"encoder": 0, "decoder": 0}
    enc = new_session(folder / contract.INTEGER_ENCODER.file)
    dec = new_session(folder / contract.INTEGER_DECODER.file)
    for spec, session in ((contract.INTEGER_ENCODER, enc), (contract.INTEGER_DECODER, dec)):
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if names != (spec.input_names, spec.output_names):
            raise ExportError(f"{spec.file}: names {names} != contract {(spec.input_names, spec.output_names)}")
    batches = [_edge_images(network.config.image_shape, rng)]
    for n in (1, 7, 64):
        batches.append(images[rng.choice(len(images), size=n, replace=len(images) < n)])
    latent_batches = [_edge_latents(network.config.latent_dim, rng)]

    def compare(spec: contract.GraphSpec, got: list[np.ndarray], want: dict[str, np.ndarray], n: int, what: str) -> None:
        for out_spec, g in zip(spec.outputs, got):
            shape = [n if d == contract.BATCH else d for d in out_spec.resolve(dims)]
            if list(g.shape) != shape or str(g.dtype) != out_spec.dtype:
                failures.append(f"{spec.file}:{out_spec.name}: {g.dtype}{list(g.shape)}, contract says "
                                f"{out_spec.dtype}{shape}")
                continue
            w = want[out_spec.name]
            low_high = contract.index_range(out_spec.name) if out_spec.name != "pixels" else (0, 255)
            if g.size and (g.min() < low_high[0] or g.max() > low_high[1]):
                failures.append(f"{spec.file}:{out_spec.name}: values outside {low_high}")
            if not np.array_equal(g.astype(np.int64), np.asarray(w).astype(np.int64)):
                diff = int(np.max(np.abs(g.astype(np.int64) - np.asarray(w).astype(np.int64))))
                failures.append(f"{spec.file}:{out_spec.name} on {what}: {int(np.sum(g != w))} values differ from "
                                f"the int64 reference (max {diff})")

    for batch in batches:
        got = enc.run(None, {"images": batch})
        mean_i, logvar_i = reference_encode(network, batch)
        compare(contract.INTEGER_ENCODER, got, {"mean_index": mean_i, "logvar_index": logvar_i}, len(batch), "images")
        compared["encoder"] += len(batch)
        if model is not None:
            with torch.no_grad():
                tm, tv = model.encode_indices(torch.from_numpy(batch), torch.float64)
            compare(contract.INTEGER_ENCODER, [tm.numpy().astype(np.int32), tv.numpy().astype(np.int32)],
                    {"mean_index": mean_i, "logvar_index": logvar_i}, len(batch), "torch vs reference")
        # latents the encoder gives: posterior means on the decoder's grid
        latent_batches.append(np.clip(np.rint(mean_i / 4), -LATENT_MAX, LATENT_MAX).astype(np.int32))
    for latents in latent_batches:
        got = dec.run(None, {"latents": latents})
        want = reference_decode(network, latents)
        compare(contract.INTEGER_DECODER, got, want, len(latents), "latents")
        compared["decoder"] += len(latents)
        if model is not None:
            with torch.no_grad():
                tl, tm, ts = model.decode_indices(torch.from_numpy(latents.astype(np.int64)), torch.float64)
            for name, t in (("mixture_logit_index", tl), ("mixture_mean_index", tm), ("mixture_log_scale_index", ts)):
                if not np.array_equal(t.numpy().astype(np.int64), want[name]):
                    failures.append(f"torch decoder:{name}: differs from the int64 reference")
    if failures:
        raise ExportError("integer export validation failed: " + "; ".join(dict.fromkeys(failures)))
    worst = max(int(layer.worst_sums().max()) for layer in network.layers())
    return {"kind": "exact", "reference": "edgevae.training.integer.reference_encode/reference_decode (numpy int64)",
            "inputs": "real test images at batch 1, 7, 64; all-0, all-255, noise, salt-and-pepper images; latents 0, "
                      "+-2048, random, N(0, I), posterior means",
            "compared": compared, "max_abs_diff": 0,
            "torch_checked": model is not None,
            "worst_partial_sum": worst, "limit": LIMIT}
