"""edgevae.training.export: the bundle's files, manifest, ONNX checks and parity with PyTorch."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import TINY_SHAPE, synthetic_images
from edgevae.runtime import contract
from edgevae.runtime.errors import ExportError, OutputError
from edgevae.training import export as export_mod
from edgevae.training.data import load_dataset
from edgevae.training.export import DecoderGraph, EncoderGraph, export_run
from edgevae.training.train import load_checkpoint, model_from_checkpoint

DIMS = contract.dims_of(TINY_SHAPE, 8, 3)
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


@pytest.fixture(scope="module")
def manifest(tiny_bundle: Path) -> dict:
    return json.loads((tiny_bundle / "model.json").read_text())


@pytest.fixture(scope="module")
def torch_vae(tiny_run: Path):
    return model_from_checkpoint(load_checkpoint(tiny_run))


@pytest.fixture(scope="module")
def test_images(image_folder: Path) -> np.ndarray:
    """The real held-out split the tiny model was exported and evaluated with."""
    return load_dataset(str(image_folder), TINY_SHAPE).test


def all_nodes(graph: onnx.GraphProto):
    """Every node of a graph, including those inside If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from all_nodes(sub)


# -- files and ONNX checks ----------------------------------------------------------------------


def test_bundle_files(tiny_bundle: Path, manifest: dict) -> None:
    files = {p.name for p in tiny_bundle.iterdir()}
    assert {"encoder.onnx", "decoder.onnx", "model.json"} <= files
    # Nothing else lies around: no external-weights side file, no staging leftovers; any other
    # file is one the manifest names and hashes (e.g. codec tables).
    named = {manifest["graphs"][spec.key]["file"] for spec in contract.GRAPHS} | {"model.json"}
    named |= {entry["file"] for entry in manifest.values() if isinstance(entry, dict) and "file" in entry
              and "sha256" in entry}
    assert files <= named


@pytest.mark.parametrize("spec", contract.GRAPHS, ids=lambda s: s.key)
def test_onnx_checker_full_check_and_self_contained(tiny_bundle: Path, spec: contract.GraphSpec) -> None:
    path = tiny_bundle / spec.file
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert proto.graph.initializer, "weights are embedded in the file"
    for tensor in proto.graph.initializer:
        assert tensor.data_location != onnx.TensorProto.EXTERNAL, tensor.name
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {contract.OPSET}


@pytest.mark.parametrize("spec", contract.GRAPHS, ids=lambda s: s.key)
def test_no_random_operators(tiny_bundle: Path, spec: contract.GraphSpec) -> None:
    proto = onnx.load(str(tiny_bundle / spec.file))
    ops = {node.op_type for node in all_nodes(proto.graph)}
    for function in proto.functions:
        ops |= {node.op_type for node in function.node}
    assert ops, "the graph has operators"
    assert not ops & RANDOM_OPS


@pytest.mark.parametrize("spec", contract.GRAPHS, ids=lambda s: s.key)
def test_metadata_props_carry_the_key_facts(tiny_bundle: Path, manifest: dict, spec: contract.GraphSpec) -> None:
    props = {p.key: p.value for p in onnx.load(str(tiny_bundle / spec.file)).metadata_props}
    assert props["edgevae.format"] == contract.MANIFEST_FORMAT
    assert props["edgevae.format_version"] == str(contract.MANIFEST_VERSION)
    assert json.loads(props["edgevae.image_shape"]) == [1, 28, 28]
    assert json.loads(props["edgevae.pixel_range"]) == [0, 255]
    assert props["edgevae.latent_dim"] == "8"
    likelihood = json.loads(props["edgevae.likelihood"])
    assert likelihood["kind"] == contract.LIKELIHOOD_KIND and likelihood["components"] == 3
    assert props["edgevae.precision"] == "fp32"
    assert props["edgevae.training_command"] == manifest["training"]["command"]


# -- the manifest -------------------------------------------------------------------------------


def test_manifest_describes_the_bundle(tiny_bundle: Path, manifest: dict, image_folder: Path) -> None:
    assert manifest["format"] == contract.MANIFEST_FORMAT
    assert manifest["format_version"] == contract.MANIFEST_VERSION
    assert manifest["image"] == {"shape": [1, 28, 28], "layout": "NCHW", "dtype": "uint8", "pixel_range": [0, 255]}
    assert manifest["latent"]["dim"] == 8
    assert manifest["likelihood"]["kind"] == contract.LIKELIHOOD_KIND
    assert manifest["likelihood"]["components"] == 3
    assert manifest["likelihood"]["domain"] == contract.LIKELIHOOD_DOMAIN
    assert manifest["opset"] == contract.OPSET
    for spec in contract.GRAPHS:
        entry = manifest["graphs"][spec.key]
        assert entry["file"] == spec.file
        for key in ("inputs", "outputs"):
            assert entry[key] == spec.describe(DIMS)[key]
        assert entry["sha256"] == hashlib.sha256((tiny_bundle / spec.file).read_bytes()).hexdigest()
    assert manifest["graphs"]["encoder"]["inputs"] == [{"name": "images", "dtype": "uint8",
                                                        "shape": ["batch", 1, 28, 28]}]
    assert manifest["graphs"]["decoder"]["outputs"][1] == {"name": "mixture_logits", "dtype": "float32",
                                                           "shape": ["batch", 3, 1, 28, 28]}


def test_manifest_records_training_data_and_versions(manifest: dict, image_folder: Path) -> None:
    training = manifest["training"]
    assert training["command"].startswith("edgevae-train train --dataset ")
    assert "--latent-dim 8" in training["command"] and "--components 3" in training["command"]
    assert training["model_config"]["latent_dim"] == 8 and training["epochs_trained"] == 2
    assert training["train_config"]["seed"] == 0
    assert training["data_fingerprint"] == load_dataset(str(image_folder), TINY_SHAPE).fingerprint
    for package in ("python", "edgevae", "torch", "onnx", "onnxruntime", "numpy"):
        assert manifest["versions"][package] not in ("", "not installed"), package
    assert manifest["versions"]["onnxruntime"] == ort.__version__


def test_manifest_evaluation(manifest: dict, test_images: np.ndarray, tiny_model) -> None:
    evaluation = manifest["evaluation"]
    assert evaluation["k"] == 4 and evaluation["images"] == len(test_images) and evaluation["split"] == "test"
    assert 0 < evaluation["iwae_bpd"] <= evaluation["nelbo_bpd"] < 8
    # The reported PSNR is that of the runtime's reconstruct on the same images.
    recon = tiny_model.reconstruct(test_images).astype(np.float64)
    mse = ((recon - test_images) ** 2).reshape(len(test_images), -1).mean(1)
    assert evaluation["psnr_db"] == pytest.approx(np.mean(10 * np.log10(255**2 / mse)), abs=0.05)


def test_manifest_parity(manifest: dict) -> None:
    parity = manifest["parity"]
    assert parity["tolerance"] == contract.PARITY_TOLERANCE == 1e-4
    assert 1 in parity["batch_sizes"] and len(parity["batch_sizes"]) >= 3
    for spec in contract.GRAPHS:
        diffs = parity["max_abs_diff"][spec.key]
        assert set(diffs) == set(spec.output_names)
        for name, diff in diffs.items():
            assert 0 <= diff <= (1 if name == "pixels" else 1e-4), (spec.key, name, diff)


# -- ONNX Runtime -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", contract.GRAPHS, ids=lambda s: s.key)
def test_onnx_runtime_batches_without_warnings(tiny_bundle: Path, spec: contract.GraphSpec,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 1  # info and up: a shape warning (severity 2) would be printed
    session = ort.InferenceSession(str(tiny_bundle / spec.file), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    for tensor in [*session.get_inputs(), *session.get_outputs()]:
        assert isinstance(tensor.shape[0], str), f"{tensor.name}: batch axis must be dynamic"
    rng = np.random.default_rng(0)
    for n in (1, 7, 1024):
        if spec is contract.ENCODER:
            feed = rng.integers(0, 256, (n, *TINY_SHAPE), dtype=np.uint8)
        else:
            feed = rng.standard_normal((n, 8)).astype(np.float32)
        outputs = session.run(None, {spec.inputs[0].name: feed})
        for out_spec, value in zip(spec.outputs, outputs):
            want = [n if d == contract.BATCH else d for d in out_spec.resolve(DIMS)]
            assert list(value.shape) == want and str(value.dtype) == out_spec.dtype, out_spec.name
            if value.dtype == np.float32:
                assert np.isfinite(value).all()
    logged = capfd.readouterr().err
    assert "[W:" not in logged and "[E:" not in logged, logged


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_parity_with_pytorch_on_real_images(tiny_bundle: Path, torch_vae, test_images: np.ndarray,
                                            batch: int) -> None:
    images = np.concatenate([test_images, synthetic_images(16, seed=31)])[:batch]
    encoder = ort.InferenceSession(str(tiny_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(tiny_bundle / "decoder.onnx"), providers=["CPUExecutionProvider"])
    mean, logvar = encoder.run(None, {"images": images})
    with torch.inference_mode():
        want_mean, want_logvar = (t.numpy() for t in EncoderGraph(torch_vae)(torch.from_numpy(images)))
    assert np.abs(mean - want_mean).max() <= 1e-4
    assert np.abs(logvar - want_logvar).max() <= 1e-4
    latents = np.concatenate([mean, np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)])
    got = decoder.run(None, {"latents": latents})
    with torch.inference_mode():
        want = [t.numpy() for t in DecoderGraph(torch_vae)(torch.from_numpy(latents))]
    pixels, *params = got
    assert np.abs(pixels.astype(int) - want[0]).max() <= 1
    assert (pixels == want[0]).mean() > 0.99
    for name, g, w in zip(contract.DECODER.output_names[1:], params, want[1:]):
        assert np.abs(g - w).max() <= 1e-4, name


def numpy_log_prob(images: np.ndarray, logits: np.ndarray, means: np.ndarray, log_scales: np.ndarray) -> np.ndarray:
    """log p(image | z) in nats per image, straight from the contract's formula (numpy, float64)."""
    x = (images.astype(np.float64) / 127.5 - 1.0)[:, None]
    inv = np.exp(-log_scales.astype(np.float64))
    sigmoid = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    upper = np.where(images[:, None] == 255, 1.0, sigmoid(inv * (x + 1 / 255 - means)))
    lower = np.where(images[:, None] == 0, 0.0, sigmoid(inv * (x - 1 / 255 - means)))
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    return np.log(np.maximum((weights * (upper - lower)).sum(1), 1e-300)).reshape(len(images), -1).sum(1)


def test_contract_likelihood_matches_the_training_loss(tiny_model, torch_vae, test_images: np.ndarray) -> None:
    """Other languages code the README's formula on the decoder outputs; it must give the
    same number of bits as the loss the model was trained with."""
    mean, _ = tiny_model.encode(test_images)
    params = tiny_model.likelihood(mean)
    got = numpy_log_prob(test_images, params.logits, params.means, params.log_scales)
    with torch.inference_mode():
        want = -torch_vae.recon_nll(torch.from_numpy(test_images), torch.from_numpy(mean)).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert all(math.isfinite(v) for v in got)


# -- failure paths ------------------------------------------------------------------------------


def test_export_refuses_an_existing_folder(tiny_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists; pass --force"):
        export_run(tiny_run, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_validation_reports_a_mismatch(tiny_bundle: Path, tiny_run: Path, test_images: np.ndarray) -> None:
    """Graphs that disagree with PyTorch (here: weights nudged after export) fail with the figures."""
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    with torch.no_grad():
        model.encoder.head.bias += 1e-3
    with pytest.raises(ExportError) as caught:
        export_mod.check_parity(model, tiny_bundle, test_images)
    message = str(caught.value)
    assert "encoder.onnx:mean: max abs diff" in message and "> 0.0001" in message
    assert "decoder.onnx" not in message  # the decoder still matches


@pytest.mark.slow
def test_failed_parity_writes_nothing(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENCODER", "DECODER"):  # no difference can pass any output's tolerance
        spec = getattr(contract, name)
        strict = tuple(dataclasses.replace(t, tolerance=-1.0) for t in spec.outputs)
        monkeypatch.setattr(contract, name, dataclasses.replace(spec, outputs=strict))
    with pytest.raises(ExportError, match="export validation failed"):
        export_run(tiny_run, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor the staging folder


@pytest.mark.slow
def test_a_nearest_upsampling_model_exports_and_quantizes(image_folder: Path, tmp_path: Path) -> None:
    """The resize + conv decoder goes through the same export, parity check and int8 variant,
    with no DepthToSpace left for onnxruntime to reorder around."""
    from edgevae.runtime import load
    from edgevae.training import precision
    from edgevae.training.model import ModelConfig
    from edgevae.training.train import TrainConfig, train

    data = load_dataset(str(image_folder), TINY_SHAPE)
    config = ModelConfig(image_shape=TINY_SHAPE, latent_dim=8, channels=(8, 16, 16), res_blocks=0,
                         mixture_components=3, upsample="nearest")  # res_blocks as the shipped bundles
    train(data, config, TrainConfig(dataset=str(image_folder), epochs=1, batch_size=32, warmup_steps=5, seed=0),
          tmp_path / "run", log=lambda _: None)
    export_run(tmp_path / "run", tmp_path / "fp32")
    manifest = json.loads((tmp_path / "fp32" / "model.json").read_text())
    assert manifest["training"]["model_config"]["upsample"] == "nearest"
    assert "--upsample nearest" in manifest["training"]["command"]
    assert all(d <= (1 if name == "pixels" else contract.PARITY_TOLERANCE)
               for diffs in manifest["parity"]["max_abs_diff"].values() for name, d in diffs.items())
    ops = {n.op_type for n in onnx.load(str(tmp_path / "fp32" / "decoder.onnx")).graph.node}
    assert "Resize" in ops and "DepthToSpace" not in ops
    precision.make_variant(tmp_path / "fp32", tmp_path / "int8", "int8", data.train, data.test, enforce=False)
    int8 = onnx.load(str(tmp_path / "int8" / "decoder.onnx")).graph.node
    resized = {n.output[0] for n in int8 if n.op_type == "Resize"}
    assert resized and resized <= {n.input[0] for n in int8 if n.op_type == "QuantizeLinear"}  # the conv after is int8
    pixels = load(tmp_path / "int8").decode(np.zeros((3, 8), np.float32))
    assert pixels.dtype == np.uint8 and pixels.shape == (3, *TINY_SHAPE)
