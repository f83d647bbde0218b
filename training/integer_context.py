"""An integer context net: context.onnx computed with integers only, for integer context bundles.

A float context bundle's files decode in Python only: its tables come from float32 outputs that
another engine may round differently. Built like the integer VAE (training/integer.py: every layer
``Clip(Floor((Conv(a, W) + B) * 2**-s), lo, hi)`` with integer W, B and every partial sum below
2**24, so float32 carries it exactly), the context net's outputs are the coders' grid indices and
every engine computes the same ones. Its graph (contract.INTEGER_CONTEXT)::

    mixture indices (N, K, C, H, W) x3, pixels uint8, known uint8
      -> inputs on 9-bit grids, each near +-255 so one weight grid per output channel suits them all:
            logit_index >> 1  (steps of 1/8)        floor((mean_index - 4072) / 16)  (1/255: half a level)
            log_scale_index - 112  (1/16, 0 at log-scale 0)   (2 * pixel - 255) * known   255 * known
         (zero is the float value 0 on every grid, so the convolutions' zero padding is the float net's)
      -> conv 3x3, Clip 0..255 (x layers) -> conv 1x1: deltas on the output grids (1/16, 1/4080, 1/16)
      -> context indices = Clip(decoder index + delta, the contract's range)

The float :class:`~edgevae.training.context.ContextNet` it starts from is the same network on the
dequantized values; calibration sets each hidden channel's activation step, quantization-aware
fine-tuning (straight-through rounding) recovers what rounding cost. Three forms must agree to the
last integer (export checks): :class:`IntegerContext` (torch), :func:`reference_context` (numpy
int64, the specification) and :func:`context_graph` (ONNX).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgevae.runtime import contract
from edgevae.runtime.errors import ExportError
from edgevae.training.context import ContextNet
from edgevae.training.integer import (
    ACTIVATION_MAX,
    GRIDS,
    check_bounds,
    IntegerLayer,
    _Graph,
    _value_info,
    floor_ste,
    quantize_layer,
    reference_layer,
    set_activation_steps,
)

#: The input grids: (offset, divisor, step). Input a = floor((index - offset) / divisor); its real
#: value (the float net's input) is a * step. Divisors are powers of two, so Floor is exact.
_MEAN_HALF = contract.index_range("mixture_mean_index")[1] // 2  # mean index of the float mean 0
_LOG_SCALE_ZERO = -contract.LOG_SCALE_RANGE[0] * contract.LOG_SCALE_STEPS  # index of log-scale 0
INPUT_GRIDS = {
    "mixture_logit_index": (0, 2, 2.0 / contract.LOGIT_STEPS),
    "mixture_mean_index": (_MEAN_HALF - 8, 16, 16.0 / _MEAN_HALF),
    "mixture_log_scale_index": (_LOG_SCALE_ZERO, 1, 1.0 / contract.LOG_SCALE_STEPS),
}
#: Largest |input| of the first layer (pixels: |2p - 255| <= 255; logits: 512 / 2 = 256).
INPUT_MAX = 256
#: The output grids of the deltas, in the order of the head's channels: logits, means, log-scales.
OUTPUT_NAMES = ("mixture_logit_index", "mixture_mean_index", "mixture_log_scale_index")
_OUTPUT_STEP = {"mixture_logit_index": GRIDS["mixture_logit_index"]["scale"],
                "mixture_mean_index": 1.0 / _MEAN_HALF,
                "mixture_log_scale_index": GRIDS["mixture_log_scale_index"]["scale"]}


def _delta_limit(name: str) -> int:
    low, high = contract.index_range(name)
    return high - low


def prepare_inputs(logit_index: Any, mean_index: Any, log_scale_index: Any, pixels: Any, known: Any,
                   xp: Any = np) -> Any:
    """The first layer's input (N, 3K*C + 2C, H, W) from the graph's inputs, on :data:`INPUT_GRIDS`
    (numpy int64 or torch float tensors holding integers; ``xp`` is np or torch)."""
    n, k, c, h, w = logit_index.shape
    parts = []
    for name, index in zip(OUTPUT_NAMES, (logit_index, mean_index, log_scale_index)):
        offset, divisor, _ = INPUT_GRIDS[name]
        parts.append(xp.floor((index - offset) / divisor) if xp is torch else (index - offset) // divisor)
    mixture = xp.concatenate(parts, 1) if xp is np else torch.cat(parts, 1)
    mixture = mixture.reshape(n, 3 * k * c, h, w)
    pixels = (2 * pixels - ACTIVATION_MAX) * known
    known = ACTIVATION_MAX * known
    return xp.concatenate([mixture, pixels, known], 1) if xp is np else torch.cat([mixture, pixels, known], 1)


def input_steps(components: int, channels: int) -> torch.Tensor:
    """The real value of one step of each input channel of the first layer (float64)."""
    steps = []
    for name in OUTPUT_NAMES:
        steps += [INPUT_GRIDS[name][2]] * (components * channels)
    steps += [1.0 / ACTIVATION_MAX] * (2 * channels)
    return torch.tensor(steps, dtype=torch.float64)


def output_steps(components: int, channels: int) -> torch.Tensor:
    """The real value of one step of each head channel (the deltas' grids), float64."""
    return torch.tensor([_OUTPUT_STEP[name] for name in OUTPUT_NAMES for _ in range(components * channels)],
                        dtype=torch.float64)


#: The head's deltas are clipped to +-DELTA_MAX, the widest index span: no delta needs more, and
#: index + delta then stays far below 2**24.
DELTA_MAX = max(_delta_limit(name) for name in OUTPUT_NAMES)


def apply_deltas(indices: tuple[Any, Any, Any], deltas: Any, xp: Any = np) -> tuple[Any, Any, Any]:
    """The context indices: each decoder index plus its delta, clipped to the contract's range."""
    n, k, c, h, w = indices[0].shape
    deltas = deltas.reshape(n, 3 * k, c, h, w)
    out = []
    for i, (name, index) in enumerate(zip(OUTPUT_NAMES, indices)):
        low, high = contract.index_range(name)
        total = index + deltas[:, i * k:(i + 1) * k]
        out.append(xp.clip(total, low, high) if xp is np else total.clamp(low, high))
    return out[0], out[1], out[2]


@dataclass
class IntegerContextNet:
    """The integer context net as numpy int64 arrays (what context.onnx computes)."""

    components: int
    channels: int
    layers: list[IntegerLayer]  # the 3x3 convolutions, then the 1x1 head (deltas)


def reference_context(net: IntegerContextNet, logit_index: np.ndarray, mean_index: np.ndarray,
                      log_scale_index: np.ndarray, pixels: np.ndarray, known: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The integers every engine must return (int64 (N, K, C, H, W) each); ``known`` nonzero where
    ``pixels`` is known."""
    known = (np.asarray(known) != 0).astype(np.int64)
    known = np.broadcast_to(known, np.shape(pixels))
    idx = tuple(np.asarray(a, dtype=np.int64) for a in (logit_index, mean_index, log_scale_index))
    a = prepare_inputs(*idx, np.asarray(pixels, dtype=np.int64), known)
    for layer in net.layers:
        a = reference_layer(layer, a)
    return apply_deltas(idx, a)


class IntegerContext(nn.Module):
    """A float :class:`ContextNet`'s parameters computed as the integer net: forward values are the
    exact integers of the graph (in float tensors), gradients pass rounding straight through.
    Buffers ``scale_<i>``: the real value of one activation step per channel of hidden layer i."""

    def __init__(self, net: ContextNet) -> None:
        super().__init__()
        self.net = net
        self.convs = [m for m in net.body if isinstance(m, nn.Conv2d)]
        for i, conv in enumerate(self.convs):
            self.register_buffer(f"scale_{i}", torch.ones(conv.out_channels, dtype=torch.float64))

    def scales(self) -> list[torch.Tensor]:
        return [getattr(self, f"scale_{i}") for i in range(len(self.convs))]

    def _quantized(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int, int]]:
        """(weight, bias, shift, low, high, max_input, padding) of every layer, straight-through."""
        k, c = self.net.components, self.net.channels
        out = []
        in_scale, max_input = input_steps(k, c).to(self.scale_0.device), INPUT_MAX
        for conv, out_scale in zip(self.convs, self.scales()):
            w, b, s = quantize_layer(conv.weight, conv.bias, in_scale, out_scale, 0.0, max_input)
            out.append((w, b, s, 0, ACTIVATION_MAX, max_input, conv.padding[0]))
            in_scale, max_input = out_scale, ACTIVATION_MAX
        head = self.net.head
        w, b, s = quantize_layer(head.weight, head.bias, in_scale, output_steps(k, c).to(in_scale.device), 0.0,
                                 max_input)
        out.append((w, b, s, -DELTA_MAX, DELTA_MAX, max_input, 0))
        return out

    def forward(self, logit_index: torch.Tensor, mean_index: torch.Tensor, log_scale_index: torch.Tensor,
                pixels: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integer indices in, integer indices out (``dtype`` of ``logit_index``)."""
        dtype = logit_index.dtype
        known = (known != 0).to(dtype).expand_as(pixels)
        a = prepare_inputs(logit_index, mean_index, log_scale_index, pixels.to(dtype), known, xp=torch)
        for w, b, s, low, high, _, padding in self._quantized():
            acc = F.conv2d(a, w.to(dtype), b.to(dtype), padding=padding)
            a = floor_ste(acc * torch.pow(2.0, -s.to(torch.float64)).to(dtype).view(1, -1, 1, 1)).clamp(low, high)
        return apply_deltas((logit_index, mean_index, log_scale_index), a, xp=torch)

    @torch.no_grad()
    def network(self) -> IntegerContextNet:
        """The numpy int64 form of the current weights."""
        layers = [IntegerLayer("context.head" if i == len(self.convs) else f"context.conv{i}", "conv",
                               w.cpu().numpy().astype(np.int64), b.cpu().numpy().astype(np.int64),
                               s.cpu().numpy().astype(np.int64), low, high, max_input, 1, padding)
                  for i, (w, b, s, low, high, max_input, padding) in enumerate(self._quantized())]
        return IntegerContextNet(self.net.components, self.net.channels, layers)

    @torch.no_grad()
    def calibrate(self, logit_index: torch.Tensor, mean_index: torch.Tensor, log_scale_index: torch.Tensor,
                  pixels: torch.Tensor, known: torch.Tensor, quantile: float = 0.9999) -> None:
        """Set each hidden channel's activation step so that the ``quantile`` of the float net's
        activations on these inputs (dequantized from their integer grids) maps to 255."""
        k, c = self.net.components, self.net.channels
        dtype = torch.float64
        known = (known != 0).to(dtype).expand_as(pixels)
        a = prepare_inputs(logit_index.to(dtype), mean_index.to(dtype), log_scale_index.to(dtype),
                           pixels.to(dtype), known, xp=torch)
        x = (a * input_steps(k, c).view(1, -1, 1, 1)).to(self.net.head.weight.dtype)
        acts = []
        for m in self.net.body:
            x = m(x)
            if isinstance(m, nn.ReLU):
                acts.append(x)
        set_activation_steps(acts, self.scales(), quantile)

# -- the ONNX graph ----------------------------------------------------------------------------

def context_graph(net: IntegerContextNet, dims: dict[str, int], props: dict[str, str] | None = None) -> Any:
    """The ModelProto of an integer context bundle's context.onnx (contract.INTEGER_CONTEXT)."""
    from onnx import TensorProto

    g, spec = _Graph(), contract.INTEGER_CONTEXT
    k, c, h, w = dims["components"], dims["channels"], dims["height"], dims["width"]

    def const(stem: str, value: float) -> str:
        return g.const(stem, np.array(value, np.float32))

    indices = [g.node("Cast", [t.name], "index", to=TensorProto.FLOAT) for t in spec.inputs[:3]]
    parts = []
    for name, index in zip(OUTPUT_NAMES, indices):
        offset, divisor, _ = INPUT_GRIDS[name]
        a = g.node("Sub", [index, const("offset", offset)]) if offset else index
        parts.append(g.node("Floor", [g.node("Mul", [a, const("per", 1.0 / divisor)])]) if divisor > 1 else a)
    mixture = g.node("Reshape", [g.node("Concat", parts, axis=1), g.const("shape", np.array([-1, 3 * k * c, h, w], np.int64))])
    known = g.node("Cast", [g.node("Cast", ["known"], to=TensorProto.BOOL)], "known01", to=TensorProto.FLOAT)
    pixels = g.node("Cast", ["pixels"], "pixel", to=TensorProto.FLOAT)
    pixels = g.node("Mul", [g.node("Sub", [g.node("Mul", [pixels, const("two", 2.0)]), const("max", ACTIVATION_MAX)]), known])
    a = g.node("Concat", [mixture, pixels, g.node("Mul", [known, const("max", ACTIVATION_MAX)])], axis=1)
    for layer in net.layers:
        a = g.layer(layer, a)
    deltas = g.node("Reshape", [a, g.const("mixture", np.array([-1, 3 * k, c, h, w], np.int64))])
    split = [g.name("delta") for _ in OUTPUT_NAMES]
    g.node("Split", [deltas, g.const("sizes", np.array([k, k, k], np.int64))], outputs=split, axis=1)
    for name, index, delta, out in zip(OUTPUT_NAMES, indices, split, spec.outputs):
        low, high = contract.index_range(name)
        total = g.node("Clip", [g.node("Add", [index, delta]), const("low", low), const("high", high)])
        g.node("Cast", [total], outputs=[out.name], to=TensorProto.INT32)
    return g.model([_value_info(t, dims) for t in spec.inputs], [_value_info(t, dims) for t in spec.outputs],
                   "edgevae integer context net: see model.json and training/integer_context.py", props or {})


def _edge_inputs(dims: dict[str, int], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Index inputs at the ends of their ranges and random, with random pixels and masks."""
    k, c, h, w = dims["components"], dims["channels"], dims["height"], dims["width"]
    n = 6
    out = []
    for name in OUTPUT_NAMES:
        low, high = contract.index_range(name)
        a = rng.integers(low, high + 1, (n, k, c, h, w))
        a[0], a[1] = low, high
        out.append(a.astype(np.int32))
    pixels = rng.integers(0, 256, (n, c, h, w)).astype(np.uint8)
    pixels[0], pixels[1] = 0, 255
    known = (rng.random((n, c, h, w)) < 0.5).astype(np.uint8) * rng.integers(1, 256, (n, c, h, w)).astype(np.uint8)
    known[0], known[1] = 1, 255
    return (*out, pixels, known)


def check_context_graph(net: IntegerContextNet, path: Any, dims: dict[str, int],
                        batches: list[tuple[np.ndarray, ...]], model: IntegerContext | None = None,
                        seed: int = 0) -> dict[str, Any]:
    """EXACT equality of ONNX Runtime's context.onnx at ``path`` with :func:`reference_context` (and
    ``model``'s float64 torch forward, when given) on ``batches`` (real decoder outputs with their
    pixels and masks) and edge inputs, after the contract's names, dtypes and shapes, and the
    bounds of every layer; ExportError naming every failure. Returns the record for ``parity``."""
    from edgevae.runtime.model import new_session

    check_bounds(net.layers)
    session = new_session(path)
    spec = contract.INTEGER_CONTEXT
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != (spec.input_names, spec.output_names):
        raise ExportError(f"{spec.file}: names {names} != contract {(spec.input_names, spec.output_names)}")
    failures, compared = [], 0
    for batch in [*batches, _edge_inputs(dims, np.random.default_rng(seed))]:
        got = session.run(None, dict(zip(spec.input_names, batch)))
        want = reference_context(net, *batch)
        forms = [("onnxruntime", got)]
        if model is not None:
            with torch.no_grad():
                t = model(*(torch.from_numpy(np.asarray(a).astype(np.float64)) for a in batch))
            forms.append(("torch", [x.numpy() for x in t]))
        for form, outputs in forms:
            for out, o, wnt in zip(spec.outputs, outputs, want):
                if form == "onnxruntime" and str(o.dtype) != out.dtype:
                    failures.append(f"{spec.file}:{out.name}: dtype {o.dtype}, contract says {out.dtype}")
                elif not np.array_equal(np.asarray(o).astype(np.int64), wnt):
                    diff = int(np.max(np.abs(np.asarray(o).astype(np.int64) - wnt)))
                    failures.append(f"{form} {out.name}: {int(np.sum(np.asarray(o).astype(np.int64) != wnt))} values "
                                    f"differ from the int64 reference (max {diff})")
        compared += len(batch[0])
    if failures:
        raise ExportError("integer context validation failed: " + "; ".join(dict.fromkeys(failures)))
    return {"kind": "exact", "reference": "edgevae.training.integer_context.reference_context (numpy int64)",
            "inputs": "the decoder's indices on real test images with every group's mask; edge indices "
                      "(range ends, random), random pixels and masks",
            "compared": compared, "max_abs_diff": 0, "torch_checked": model is not None,
            "worst_partial_sum": max(int(layer.worst_sums().max()) for layer in net.layers),
            "limit": contract.INTEGER_EXACT_LIMIT}

