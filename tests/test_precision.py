"""edgevae.training.precision: int8 and fp16 bundle variants, their check, and the export flag."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto

from conftest import TINY_SHAPE
from edgevae.runtime import contract, load
from edgevae.runtime.bundle import read_bundle
from edgevae.runtime.errors import ContainerError, ExportError, InputError, OutputError
from edgevae.training import precision


@pytest.fixture(scope="module")
def tiny_data(image_folder: Path):
    """The tiny run's data set (same folder, same split as training)."""
    from edgevae.training.data import load_dataset

    return load_dataset(str(image_folder), TINY_SHAPE)


@pytest.fixture(scope="module")
def variants(tiny_bundle: Path, tiny_data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """int8 and fp16 variants of the tiny bundle (bounds recorded, not enforced: a 2-epoch
    model is not what the bounds are set for)."""
    root = tmp_path_factory.mktemp("variants")
    out = {"fp32": tiny_bundle}
    for p in ("int8", "fp16"):
        out[p] = root / f"tiny-{p}"
        precision.make_variant(tiny_bundle, out[p], p, tiny_data.train, tiny_data.test, enforce=False)
    return out


def graph(folder: Path, spec: contract.GraphSpec) -> onnx.ModelProto:
    return onnx.load(str(folder / spec.file))


def test_variant_manifests_say_what_they_are(variants: dict[str, Path], tiny_data) -> None:
    source = read_bundle(variants["fp32"])
    for p in ("int8", "fp16"):
        bundle = read_bundle(variants[p])  # verifies every sha256
        m = bundle.manifest
        assert bundle.precision == p and m["name"] == f"tiny-{p}"
        assert m["evaluation"] is None  # the fp32 evaluation does not describe this variant
        for spec in contract.GRAPHS:
            assert m["graphs"][spec.key]["sha256"] != source.manifest["graphs"][spec.key]["sha256"]
            assert m["variant"]["source"]["sha256"][spec.key] == source.manifest["graphs"][spec.key]["sha256"]
            props = {e.key: e.value for e in graph(variants[p], spec).metadata_props}
            assert props["edgevae.precision"] == p
            assert props["edgevae.format"] == contract.MANIFEST_FORMAT
        assert bundle.fingerprint != source.fingerprint
        assert m["parity"] == source.manifest["parity"]  # the chain of trust: fp32 graphs vs PyTorch
        check = m["variant"]["check"]
        assert check["images"] == min(precision.CHECK_IMAGES, len(tiny_data.test))
        assert set(check["diff"]) == {"encoder.mean", "encoder.logvar", "decoder.pixels", "decoder.mixture_logits",
                                      "decoder.mixture_means", "decoder.mixture_log_scales"}
        if "codec" in source.manifest:  # refitted with the variant's own encoder, hashed, verified above
            assert bundle.codec_path is not None and bundle.codec_path.is_file()


def test_variants_keep_the_uint8_contract(variants: dict[str, Path], tiny_data) -> None:
    import onnxruntime as ort

    images = tiny_data.test[:5]
    z = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    for p, folder in variants.items():
        for spec in contract.GRAPHS:
            session = ort.InferenceSession(str(folder / spec.file), providers=["CPUExecutionProvider"])
            for got, want in ((session.get_inputs(), spec.inputs), (session.get_outputs(), spec.outputs)):
                # onnxruntime spells float32 "float"
                assert [t.type for t in got] == [f"tensor({ORT_TYPE.get(t.dtype, t.dtype)})" for t in want], p
        model = load(folder, threads=1)
        mean, logvar = model.encode(images)
        assert mean.dtype == logvar.dtype == np.float32 and mean.shape == (5, 8)
        pixels = model.decode(z)
        assert pixels.dtype == np.uint8 and pixels.shape == (5, *TINY_SHAPE)
        params = model.likelihood(z)
        assert params.logits.dtype == np.float32 and params.logits.shape == (5, 3, *TINY_SHAPE)


#: onnxruntime's names for the contract's dtypes where they differ.
ORT_TYPE = {"float32": "float"}


def initializer_types(model: onnx.ModelProto) -> dict[str, int]:
    return {init.name: init.data_type for init in model.graph.initializer}


def weight_bytes(folder: Path) -> int:
    """Bytes of every initializer of both graphs (the tiny model's files are mostly structure)."""
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(init).nbytes for spec in contract.GRAPHS
               for init in graph(folder, spec).graph.initializer)


def test_int8_quantizes_convolutions_and_linear_weights(variants: dict[str, Path]) -> None:
    for spec in contract.GRAPHS:
        model = graph(variants["int8"], spec)
        ops = [n.op_type for n in model.graph.node]
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
        types = initializer_types(model)
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        producers = {o: n for n in model.graph.node for o in n.output}
        for i, conv in enumerate(convs):
            weight = conv.input[1]
            if spec is contract.DECODER and i == len(convs) - 1:
                assert types[weight] == TensorProto.FLOAT  # the likelihood layer stays fp32
            else:
                dq = producers[weight]
                assert dq.op_type == "DequantizeLinear" and types[dq.input[0]] == TensorProto.INT8
        gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
        assert types[producers[gemm.input[1]].input[0]] == TensorProto.INT8
        consumers = [n.op_type for n in model.graph.node if gemm.output[0] in n.input]
        assert "QuantizeLinear" not in consumers  # linear outputs (the latents) stay float
    assert weight_bytes(variants["int8"]) < 0.4 * weight_bytes(variants["fp32"])


def test_fp16_halves_the_weights_and_keeps_the_head_fp32(variants: dict[str, Path]) -> None:
    for spec in contract.GRAPHS:
        model = graph(variants["fp16"], spec)
        types = initializer_types(model)
        for node in model.graph.node:
            if node.op_type in ("Conv", "Gemm"):
                assert types[node.input[1]] == TensorProto.FLOAT16, node.name
    decoder = onnx.shape_inference.infer_shapes(graph(variants["fp16"], contract.DECODER))
    elem = {v.name: v.type.tensor_type.elem_type for v in decoder.graph.value_info}
    for node in decoder.graph.node:
        if node.op_type in ("Softmax", "Round", "Tanh"):
            assert elem[node.input[0]] == TensorProto.FLOAT, node.op_type
    assert 0.45 < weight_bytes(variants["fp16"]) / weight_bytes(variants["fp32"]) < 0.55


def test_recorded_check_matches_a_recomputation(variants: dict[str, Path], tiny_data) -> None:
    reference = load(variants["fp32"], threads=1)
    for p in ("int8", "fp16"):
        check = read_bundle(variants[p]).manifest["variant"]["check"]
        images = tiny_data.test[: check["images"]]
        again = precision.bundle_quality(load(variants[p], threads=1), images)
        assert again["psnr_db"] == pytest.approx(check[p]["psnr_db"], abs=1e-6)
        assert check["psnr_loss_db"] == pytest.approx(check["fp32"]["psnr_db"] - check[p]["psnr_db"])
        assert check["fp32"] == pytest.approx(precision.bundle_quality(reference, images))
    fp16 = read_bundle(variants["fp16"]).manifest["variant"]["check"]
    assert fp16["passed"], fp16["failures"]
    assert all(d["max_abs"] < 0.05 for name, d in fp16["diff"].items() if name != "decoder.pixels")
    assert abs(fp16["psnr_loss_db"]) < 0.05
    int8 = read_bundle(variants["int8"]).manifest["variant"]["check"]
    assert abs(int8["psnr_loss_db"]) < 1.0 and abs(int8["nelbo_increase_bpd"]) < 0.1


def test_compare_of_a_bundle_with_itself_is_zero(tiny_model, tiny_data) -> None:
    diffs = precision.compare(tiny_model, tiny_model, tiny_data.test)
    assert diffs and all(d == {"max_abs": 0.0, "rms": 0.0} for d in diffs.values())


def test_bundle_quality_is_the_elbo_of_the_training_code(tiny_run: Path, tiny_model, tiny_data) -> None:
    """Same eps, same images: the graphs' numbers equal PyTorch's negative ELBO and PSNR."""
    import torch

    from edgevae.training import likelihood
    from edgevae.training.train import load_checkpoint, model_from_checkpoint

    images = tiny_data.test
    got = precision.bundle_quality(tiny_model, images, seed=3)
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    with torch.inference_mode():
        x = torch.from_numpy(images)
        mean, logvar = model.encoder(x)
        eps = np.random.default_rng(3).standard_normal(tuple(mean.shape), dtype=np.float32)
        z = mean + torch.exp(0.5 * logvar) * torch.from_numpy(eps)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        nats = model.recon_nll(x, z) + kl
        logits, means, _ = model.split(model.decoder(mean))
        pixels = likelihood.mean_pixels(logits, means).round().double()
        mse = ((pixels - x.double()) ** 2).flatten(1).mean(1)
        psnr = float((10 * torch.log10(255.0**2 / mse)).mean())
    bpd = float(nats.double().mean()) / (math.prod(TINY_SHAPE) * math.log(2))
    assert got["nelbo_bpd"] == pytest.approx(bpd, abs=1e-4)
    assert got["psnr_db"] == pytest.approx(psnr, abs=1e-3)


def test_codec_containers_refuse_another_precision(variants: dict[str, Path], tiny_data) -> None:
    from edgevae.runtime.codec import Codec

    codecs = {p: Codec(load(folder, threads=1)) for p, folder in variants.items()}
    images = tiny_data.test[:4]
    for maker, codec in codecs.items():
        data = codec.compress(images)
        assert codec.decompress(data).shape == images.shape
        for reader, other in codecs.items():
            if reader != maker:
                with pytest.raises(ContainerError):
                    other.decompress(data)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["int8", "fp16"])
def test_enforced_bounds_fail_and_leave_nothing(kind: str, tiny_bundle: Path, tiny_data, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    impossible = precision.Bounds(max_psnr_loss_db=-1.0, max_nelbo_increase_bpd=1.0, max_abs_diff=1.0)
    monkeypatch.setitem(precision.BOUNDS, kind, impossible)
    target = tmp_path / "out" / f"tiny-{kind}"
    (tmp_path / "out").mkdir()
    with pytest.raises(ExportError, match=f"{kind} variant fails its check: PSNR drops"):
        precision.make_variant(tiny_bundle, target, kind, tiny_data.train, tiny_data.test)
    assert list((tmp_path / "out").iterdir()) == []


def test_refusals(variants: dict[str, Path], tiny_data, tmp_path: Path) -> None:
    train, test = tiny_data.train, tiny_data.test
    with pytest.raises(InputError, match="made from an fp32 bundle"):
        precision.make_variant(variants["int8"], tmp_path / "x", "fp16", train, test)
    with pytest.raises(OutputError, match="--force"):
        precision.make_variant(variants["fp32"], variants["int8"], "int8", train, test)
    for bad in ("fp32", "int4"):
        with pytest.raises(InputError):
            precision.make_variant(variants["fp32"], tmp_path / bad, bad, train, test)
    with pytest.raises(InputError, match="training images"):
        precision.calibration_images(train[:0])
    assert not (tmp_path / "x").exists()


def test_calibration_draw_is_seeded_and_real(tiny_data) -> None:
    a = precision.calibration_images(tiny_data.train, count=50)
    b = precision.calibration_images(tiny_data.train, count=50)
    assert np.array_equal(a, b) and len(a) == 50
    rows = {row.tobytes() for row in tiny_data.train}
    assert all(image.tobytes() in rows for image in a)
    assert len(precision.calibration_images(tiny_data.train, count=10**6)) == len(tiny_data.train)


@pytest.mark.slow
def test_export_cli_precision(tiny_run: Path, tmp_path: Path) -> None:
    from edgevae.training.cli import main

    runner = CliRunner()
    out = tmp_path / "tiny-fp16"
    result = runner.invoke(main, ["export", str(tiny_run), "-o", str(out), "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    assert "(fp16)" in result.output and "fp16 vs fp32 graphs" in result.output
    assert json.loads((out / contract.MANIFEST_FILE).read_text())["precision"] == "fp16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left
    bad = runner.invoke(main, ["export", str(tiny_run), "-o", str(tmp_path / "b"), "--precision", "int4"])
    assert bad.exit_code == 2 and "int4" in bad.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_variant_keeps_the_fp32_bundles_quality_levels(tiny_bundle: Path, tiny_data, tmp_path: Path) -> None:
    import shutil

    from edgevae.runtime.tables import bundle_step_factors
    from edgevae.training.codec_tables import add_codec_tables

    fp32 = tmp_path / "fp32"
    shutil.copytree(tiny_bundle, fp32)
    add_codec_tables(fp32, step_factors=[12, 9, 6, 4, 2])
    precision.make_variant(fp32, tmp_path / "int8", "int8", tiny_data.train, tiny_data.test, enforce=False)
    assert bundle_step_factors(read_bundle(tmp_path / "int8")) == [12, 9, 6, 4, 2]
