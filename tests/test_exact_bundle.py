"""A stand-in integer bundle for the runtime's tests: a float bundle's graphs wrapped so that they
speak the integer contract (runtime/contract.py INTEGER_ENCODER / INTEGER_DECODER).

The wrapped graphs round the float outputs to the contract's grids (Round, Clip, Cast) and feed
the decoder latent_index / 256: the same network as the float bundle with the integer signature,
so the runtime's integer paths (exact tables, version-3 containers) can be tested and measured
against the float tables on the same network before (or besides) a real integer-trained bundle
(training/integer.py). Its arithmetic is float inside, so unlike a real integer bundle its
outputs are not engine-independent; the tests here do not rely on that.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgevae.runtime import contract

ROOT = Path(__file__).resolve().parents[1]
FLOAT_BUNDLE = ROOT / "exported" / "fashion-mnist"


def _const(name: str, value: float | int, dtype: type = np.float32):  # -> onnx.TensorProto
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _to_index(helper, nodes: list, inits: list, src: str, out: str, add: float, mul: float, lo: int, hi: int) -> None:
    """out = int32(clip(round((src + add) * mul), lo, hi))."""
    tag = out
    inits += [_const(f"{tag}_add", add), _const(f"{tag}_mul", mul), _const(f"{tag}_lo", float(lo)),
              _const(f"{tag}_hi", float(hi))]
    nodes += [helper.make_node("Add", [src, f"{tag}_add"], [f"{tag}_a"]),
              helper.make_node("Mul", [f"{tag}_a", f"{tag}_mul"], [f"{tag}_m"]),
              helper.make_node("Round", [f"{tag}_m"], [f"{tag}_r"]),
              helper.make_node("Clip", [f"{tag}_r", f"{tag}_lo", f"{tag}_hi"], [f"{tag}_c"]),
              helper.make_node("Cast", [f"{tag}_c"], [out], to=6)]  # int32


def _rename_outputs(graph, renames: dict[str, str]) -> None:
    for node in graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]


def wrap_integer_bundle(source: Path, target: Path) -> Path:
    """Write an integer-contract copy of the float bundle ``source`` to ``target``; returns it."""
    import onnx
    from onnx import TensorProto, helper

    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    manifest = json.loads((source / "model.json").read_text())

    enc = onnx.load(str(source / "encoder.onnx"))
    g = enc.graph
    _rename_outputs(g, {"mean": "f_mean", "logvar": "f_logvar"})
    nodes, inits = [], []
    lo, hi = contract.index_range("mean_index")
    _to_index(helper, nodes, inits, "f_mean", "mean_index", 0.0, float(1 << contract.POSTERIOR_MEAN_BITS), lo, hi)
    lo, hi = contract.index_range("logvar_index")
    _to_index(helper, nodes, inits, "f_logvar", "logvar_index", -float(contract.LOGVAR_RANGE[0]),
              float(1 << contract.LOGVAR_BITS), lo, hi)
    g.node.extend(nodes)
    g.initializer.extend(inits)
    dims = [d for d in (o.type.tensor_type.shape.dim for o in g.output)]
    del g.output[:]
    for name in ("mean_index", "logvar_index"):
        g.output.append(helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", manifest["latent"]["dim"]]))
    del dims

    dec = onnx.load(str(source / "decoder.onnx"))
    g = dec.graph
    _rename_outputs(g, {"latents": "f_latents", "pixels": "f_pixels", "mixture_logits": "f_logits",
                        "mixture_means": "f_means", "mixture_log_scales": "f_log_scales"})
    latent = manifest["latent"]["dim"]
    c, h, w = manifest["image"]["shape"]
    k = manifest["likelihood"]["components"]
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("latents", TensorProto.INT32, ["batch", latent]))
    nodes, inits = [], [_const("inv256", 1.0 / (1 << contract.LATENT_INPUT_BITS))]
    prefix = [helper.make_node("Cast", ["latents"], ["latents_f"], to=1),
              helper.make_node("Mul", ["latents_f", "inv256"], ["f_latents"])]
    for src, out, add, mul in (("f_logits", "mixture_logit_index", 0.0, contract.LOGIT_STEPS),
                               ("f_means", "mixture_mean_index", 1.0, contract.PIXEL_SCALE * contract.MEAN_SUBSTEPS),
                               ("f_log_scales", "mixture_log_scale_index", -float(contract.LOG_SCALE_RANGE[0]),
                                contract.LOG_SCALE_STEPS)):
        lo, hi = contract.index_range(out)
        _to_index(helper, nodes, inits, src, out, add, float(mul), lo, hi)
    # pixels: (mean index of the heaviest component (first of equal logits) + 16) // 32
    inits += [_const("half", contract.MEAN_SUBSTEPS // 2, np.int32), _const("sub", contract.MEAN_SUBSTEPS, np.int32)]
    nodes += [helper.make_node("ArgMax", ["mixture_logit_index"], ["heaviest"], axis=1, keepdims=1),
              helper.make_node("GatherElements", ["mixture_mean_index", "heaviest"], ["top_mean"], axis=1),
              helper.make_node("Add", ["top_mean", "half"], ["top_half"]),
              helper.make_node("Div", ["top_half", "sub"], ["top_level"]),  # non-negative: floor
              helper.make_node("Squeeze", ["top_level", "axis1"], ["top_sq"]),
              helper.make_node("Cast", ["top_sq"], ["pixels"], to=2)]  # uint8
    inits.append(_const("axis1", [1], np.int64))
    body = list(g.node)
    del g.node[:]
    g.node.extend(prefix + body + nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", c, h, w]))
    for name in ("mixture_logit_index", "mixture_mean_index", "mixture_log_scale_index"):
        g.output.append(helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", k, c, h, w]))

    if (source / contract.PRIOR.file).exists():  # the learned sampling prior stays as it is
        shutil.copy(source / contract.PRIOR.file, target / contract.PRIOR.file)
    files = {}
    for key, model in (("encoder", enc), ("decoder", dec)):
        onnx.checker.check_model(model)
        data = model.SerializeToString()
        (target / f"{key}.onnx").write_bytes(data)
        files[key] = hashlib.sha256(data).hexdigest()
    dims = contract.dims_of((c, h, w), latent, k)
    for spec in contract.graphs_for(contract.ARITHMETIC_INTEGER):
        manifest["graphs"][spec.key] = {**spec.describe(dims), "sha256": files[spec.key]}
    manifest["arithmetic"] = contract.ARITHMETIC_INTEGER
    manifest["name"] = f"{manifest.get('name', source.name)}-integer-wrapped"
    manifest.pop("codec", None)
    manifest.pop("role", None)
    manifest.pop("roles", None)
    (target / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target


@pytest.fixture(scope="session")
def integer_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wrapped fashion-mnist bundle (integer contract), made once per session."""
    pytest.importorskip("onnx")
    return wrap_integer_bundle(FLOAT_BUNDLE, tmp_path_factory.mktemp("exact") / "fashion-mnist-wrapped")


def test_the_wrapped_bundle_speaks_the_integer_contract(integer_bundle: Path) -> None:
    from edgevae.runtime.model import load

    model = load(integer_bundle, threads=1)
    assert model.integer
    images = np.zeros((3, 1, 28, 28), np.uint8)
    images[:, :, 8:20, 8:20] = 200
    m, lv = model.encode_indices(images)
    assert m.dtype == np.int32 and lv.dtype == np.int32 and m.shape == (3, 32)
    mean, logvar = model.encode(images)
    assert np.array_equal(mean, m / 1024) and np.array_equal(logvar, -24 + lv / 64)
    mix = model.likelihood_indices(np.zeros((2, 32), np.int32))
    assert mix.mean_index.shape == (2, 5, 1, 28, 28) and mix.mean_index.dtype == np.int32
    heaviest = mix.logit_index.argmax(axis=1)[:, None]
    expected = (np.take_along_axis(mix.mean_index, heaviest, axis=1)[:, 0] + 16) // 32
    assert np.array_equal(model.decode_indices(np.zeros((2, 32), np.int32)), expected.astype(np.uint8))
    assert np.array_equal(model.decode(np.zeros((2, 32), np.float32)), expected.astype(np.uint8))
    assert model.sample(2, seed=1).shape == (2, 1, 28, 28)
    assert model.reconstruct(images).shape == images.shape
