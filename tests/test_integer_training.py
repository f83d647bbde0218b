"""Integer networks (training/integer.py, training/integer_run.py): the ONNX graphs, the numpy
int64 reference and the torch forward give the same integers; bounds are enforced; the
end-to-end run exports a bundle whose manifest validates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgevae.runtime import contract
from edgevae.runtime.errors import ExportError, InputError

from conftest import synthetic_images

SHAPE = (1, 16, 16)


def _tiny_integer(seed: int = 0):
    from edgevae.training.integer import IntegerVAE
    from edgevae.training.model import VAE, ModelConfig

    torch.manual_seed(seed)
    vae = VAE(ModelConfig(image_shape=SHAPE, latent_dim=3, channels=(4, 8), mixture_components=2, upsample="nearest"))
    model = IntegerVAE(vae).eval()
    images = torch.from_numpy(synthetic_images(64, seed, SHAPE))
    with torch.no_grad():
        mean, logvar = vae.encoder(images)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    model.calibrate(images, z)
    return model


def _write_graphs(network, folder: Path) -> Path:
    from edgevae.training.integer import decoder_graph, encoder_graph
    from edgevae.training.onnxgraph import save_checked

    folder.mkdir(parents=True, exist_ok=True)
    save_checked(encoder_graph(network), folder / contract.INTEGER_ENCODER.file)
    save_checked(decoder_graph(network), folder / contract.INTEGER_DECODER.file)
    return folder


def test_graphs_equal_the_int64_reference_exactly(tmp_path: Path) -> None:
    from edgevae.runtime.model import new_session
    from edgevae.training.integer import check_graphs, reference_decode, reference_encode

    model = _tiny_integer()
    network = model.network()
    folder = _write_graphs(network, tmp_path / "g")
    record = check_graphs(network, folder, synthetic_images(20, 1, SHAPE), model=model)
    import onnx

    graph = onnx.load(str(folder / "decoder.onnx")).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    bounds = [shapes[name] for node in graph.node if node.op_type == "Clip" for name in node.input[1:]]
    assert bounds and all(shape == [] for shape in bounds)  # Clip's bounds must be scalars (the ONNX spec)
    assert record["max_abs_diff"] == 0 and record["torch_checked"] and record["worst_partial_sum"] < 2 ** 24
    # the edges, spelled out: all-0 and all-255 images, extreme latents
    images = np.stack([np.zeros(SHAPE, np.uint8), np.full(SHAPE, 255, np.uint8)])
    mean_i, logvar_i = new_session(folder / "encoder.onnx").run(None, {"images": images})
    want_mean, want_logvar = reference_encode(network, images)
    assert mean_i.dtype == np.int32 and np.array_equal(mean_i, want_mean) and np.array_equal(logvar_i, want_logvar)
    latents = np.array([[-2048, 2048, 0], [2048, 2048, 2048], [-2048, -2048, -2048]], np.int32)
    got = new_session(folder / "decoder.onnx").run(None, {"latents": latents})
    want = reference_decode(network, latents)
    for spec, g in zip(contract.INTEGER_DECODER.outputs, got):
        assert str(g.dtype) == spec.dtype and np.array_equal(g, want[spec.name]), spec.name
        if spec.name != "pixels":
            low, high = contract.index_range(spec.name)
            assert low <= g.min() and g.max() <= high
    # pixels are the heaviest component's mean index, rounded to a level
    logits, means = want["mixture_logit_index"], want["mixture_mean_index"]
    first = np.take_along_axis(means, logits.argmax(1)[:, None], 1)[:, 0]
    assert np.array_equal(got[0], (first + 16) // 32)


@pytest.mark.parametrize("doctor, phrase", [
    (lambda layer: layer.weight.__setitem__((1,), 300), "weight 300 exceeds 127"),
    (lambda layer: (layer.weight.__setitem__((1,), 127), layer.bias.__setitem__(1, 2 ** 24 - 5)), "2**24"),
])
def test_a_doctored_weight_that_breaks_the_bound_is_refused_in_one_line(tmp_path: Path, doctor, phrase) -> None:
    from edgevae.training.integer import check_bounds, check_graphs

    network = _tiny_integer().network()
    doctor(network.encoder[1])
    with pytest.raises(ExportError) as info:
        check_bounds(network)
    message = str(info.value)
    assert phrase in message and "encoder.conv1 channel 1" in message and "\n" not in message
    with pytest.raises(ExportError):
        check_graphs(network, tmp_path, synthetic_images(4, 0, SHAPE))


def test_unsupported_models_are_refused() -> None:
    from edgevae.training.integer import IntegerVAE
    from edgevae.training.model import VAE, ModelConfig

    with pytest.raises(InputError, match="res_blocks 0 and upsample 'nearest'"):
        IntegerVAE(VAE(ModelConfig(image_shape=SHAPE, latent_dim=3, channels=(4, 8), upsample="pixel-shuffle")))


def test_help_teaches_the_two_commands() -> None:
    from edgevae.training.cli import main

    for command, phrase in (("integer", "post-training"), ("integer-export", "int64 reference")):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and phrase in result.output


@pytest.mark.slow
def test_end_to_end_run_and_export(float_bundle: Path, tmp_path: Path) -> None:
    from edgevae.runtime import manifest as schema
    from edgevae.runtime.model import new_session
    from edgevae.training.cli import main
    from edgevae.training.integer import reference_decode, reference_encode
    from edgevae.training.integer_run import load_run

    run, bundle = tmp_path / "run", tmp_path / "exact"
    result = CliRunner().invoke(main, ["integer", str(float_bundle), "--epochs", "1", "--batch-size", "32",
                                       "--calibration-images", "64", "--out", str(run)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1] and all(np.isfinite(m["nelbo_bpd"]) for m in lines)
    result = CliRunner().invoke(main, ["integer-export", str(run), "-o", str(bundle)])
    assert result.exit_code == 0, result.output
    manifest = schema.validate(json.loads((bundle / "model.json").read_text()))
    assert manifest["arithmetic"] == "integer" and manifest["parity"]["max_abs_diff"] == 0
    assert manifest["training"]["command"].startswith(f"edgevae-train integer {float_bundle}")
    assert "codec" in manifest and (bundle / "codec.json").is_file()
    network = load_run(run)[-1].network()
    from edgevae.training.integer import load_network

    read = load_network(bundle)  # the same network, read back from the graphs alone
    assert read.upsample_before == network.upsample_before and np.array_equal(read.table, network.table)
    for a, b in zip(read.layers(), network.layers(), strict=True):
        assert (a.name, a.op, a.low, a.high, a.max_input, a.stride, a.padding) == \
            (b.name, b.op, b.low, b.high, b.max_input, b.stride, b.padding)
        assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("weight", "bias", "shift"))
    images = synthetic_images(5, 3)
    got = new_session(bundle / "encoder.onnx").run(None, {"images": images})
    assert all(np.array_equal(g, w) for g, w in zip(got, reference_encode(network, images)))
    latents = np.rint(got[0] / 4).astype(np.int32)
    got = new_session(bundle / "decoder.onnx").run(None, {"latents": latents})
    want = reference_decode(network, latents)
    assert all(np.array_equal(g, want[s.name]) for s, g in zip(contract.INTEGER_DECODER.outputs, got))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion-mnist-exact", "fashion-mnist-codec-exact"])
def test_shipped_integer_bundles_are_exact_and_within_1_percent_of_their_source(name: str) -> None:
    from edgevae.exported import BUNDLES
    from edgevae.runtime import manifest as schema
    from edgevae.runtime.model import new_session
    from edgevae.training.data import load_fashion_mnist
    from edgevae.training.integer import check_bounds, load_network, reference_decode, reference_encode

    bundle = BUNDLES / name
    manifest = schema.validate(json.loads((bundle / "model.json").read_text()))
    evaluation = manifest["evaluation"]
    assert manifest["arithmetic"] == "integer" and evaluation["images"] == 10_000
    assert evaluation["nelbo_bpd"] <= 1.01 * evaluation["source_nelbo_bpd"]
    network = load_network(bundle)
    check_bounds(network)
    images = load_fashion_mnist().test[:50]
    got = new_session(bundle / "encoder.onnx", threads=1).run(None, {"images": images})
    assert all(np.array_equal(g, w) for g, w in zip(got, reference_encode(network, images)))
    latents = np.rint(got[0] / 4).astype(np.int32)
    got = new_session(bundle / "decoder.onnx", threads=1).run(None, {"latents": latents})
    want = reference_decode(network, latents)
    assert all(np.array_equal(g, want[s.name]) for s, g in zip(contract.INTEGER_DECODER.outputs, got))
