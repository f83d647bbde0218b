"""Integer context bundles (training/integer_context.py, integer_context_run.py): a float context
bundle's net made an integer net on an integer bundle's VAE, so its lossless files are version-3
(exact set) containers that every engine decodes.

Tiny bundles from conftest (float_bundle -> integer_run / context_run) make the end-to-end checks
fast; the shipped bundle is checked on real test images when Fashion-MNIST is installed (CI
installs it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import synthetic_images

SHIPPED = Path(__file__).resolve().parents[1] / "exported" / "fashion-mnist-context2-exact"


@pytest.fixture(scope="module")
def ictx_bundle(integer_context_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgevae.training.cli import main

    bundle = tmp_path_factory.mktemp("ictx-bundle") / "ictx"
    result = CliRunner().invoke(main, ["integer-context-export", str(integer_context_run), "-o", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "exact against the int64 reference" in result.output
    return bundle


def test_the_run_calibrates_then_fine_tunes(integer_context_run: Path) -> None:
    lines = [json.loads(line) for line in (integer_context_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1]
    assert lines[0]["kind"] == "post-training quantization" and lines[1]["kind"] == "quantization-aware fine-tuning"
    for m in lines:
        assert np.isfinite(m["nelbo_bpd"]) and 0 < m["kl_bpd"] < m["nelbo_bpd"]


def test_the_bundle_keeps_the_integer_vae_and_describes_an_integer_context_graph(
        ictx_bundle: Path, integer_source: Path, context_bundle: Path) -> None:
    from edgevae.runtime import contract
    from edgevae.runtime.bundle import read_bundle

    manifest = json.loads((ictx_bundle / "model.json").read_text())
    assert manifest["arithmetic"] == "integer" and manifest["pixel_groups"] == 4
    assert "codec" not in manifest and "role" not in manifest
    for name in ("encoder.onnx", "decoder.onnx"):
        assert (ictx_bundle / name).read_bytes() == (integer_source / name).read_bytes()
    bundle = read_bundle(ictx_bundle)
    dims = contract.dims_of(bundle.image_shape, bundle.latent_dim, bundle.components)
    described = {k: v for k, v in manifest["graphs"]["context"].items() if k in ("inputs", "outputs")}
    assert described == {k: v for k, v in contract.INTEGER_CONTEXT.describe(dims).items() if k != "file"}
    assert manifest["parity"]["context"]["max_abs_diff"] == 0 and manifest["parity"]["context"]["torch_checked"]
    assert manifest["training"]["context_bundle"] == context_bundle.name
    # another model than both of its sources: their containers never decode with it, nor its with them
    assert len({read_bundle(p).fingerprint for p in (ictx_bundle, integer_source, context_bundle)}) == 3


def test_lossless_round_trip_is_exact_and_a_version_3_container(ictx_bundle: Path, integer_source: Path) -> None:
    import edgevae.runtime as ev
    from edgevae.runtime.container import read_header
    from edgevae.runtime.errors import ContainerError

    images = synthetic_images(9, seed=5)
    codec = ev.LosslessCodec(ev.load(ictx_bundle, threads=1))
    data = codec.compress(images)
    assert read_header(data)[0].version == 3
    assert np.array_equal(codec.decompress(data), images)
    with pytest.raises(ContainerError, match="another model"):
        ev.LosslessCodec(ev.load(integer_source, threads=1)).decompress(data)


def test_the_coded_likelihood_is_the_trained_one(integer_context_run: Path, ictx_bundle: Path) -> None:
    """The runtime's grouped log p(x|z) (ONNX graphs, contract grids) equals the run's torch form."""
    import torch

    import edgevae.runtime as ev
    from edgevae.training.integer_context_run import grouped_nll, load_run, sample_indices

    _, _, sources, model = load_run(integer_context_run)
    runtime = ev.load(ictx_bundle, threads=1)
    images = synthetic_images(6, seed=8)
    eps = np.random.default_rng(0).standard_normal((6, runtime.latent_dim))
    idx, _ = sample_indices(sources.vae, images, eps)
    with torch.no_grad():
        want = grouped_nll(model, sources.masks, torch.from_numpy(images), idx, torch.float64).numpy()
    mean_index, logvar_index = runtime.encode_indices(images)
    from edgevae.training.integer import dequantize_posterior

    mean, logvar = dequantize_posterior(mean_index.astype(np.float64), logvar_index.astype(np.float64))
    got = -runtime.log_likelihood(images, mean + np.exp(0.5 * logvar) * eps)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_the_export_check_catches_a_graph_that_differs_from_the_reference(integer_context_run: Path, tmp_path: Path) -> None:
    from edgevae.runtime import contract
    from edgevae.runtime.errors import ExportError
    from edgevae.training.integer_context import check_context_graph, context_graph, reference_context
    from edgevae.training.integer_context_run import load_run

    _, _, sources, model = load_run(integer_context_run)
    net = model.network()
    b = sources.integer
    dims = contract.dims_of(b.image_shape, b.latent_dim, b.components)
    path = tmp_path / "context.onnx"
    path.write_bytes(context_graph(net, dims).SerializeToString())
    assert check_context_graph(net, path, dims, [])["max_abs_diff"] == 0
    net.layers[-1].bias[0] += 1 << int(max(net.layers[-1].shift[0], 0))  # one step off in one channel
    with pytest.raises(ExportError, match="differ from the int64 reference"):
        check_context_graph(net, path, dims, [])
    # the reference itself clamps every output to the contract's range, whatever the inputs
    rng = np.random.default_rng(1)
    k, c, h, w = dims["components"], dims["channels"], dims["height"], dims["width"]
    inputs = [rng.integers(*contract.index_range(n), size=(2, k, c, h, w), endpoint=True)
              for n in ("mixture_logit_index", "mixture_mean_index", "mixture_log_scale_index")]
    out = reference_context(net, *inputs, rng.integers(0, 256, (2, c, h, w)), rng.integers(0, 2, (2, c, h, w)))
    for name, o in zip(("mixture_logit_index", "mixture_mean_index", "mixture_log_scale_index"), out):
        low, high = contract.index_range(name)
        assert o.min() >= low and o.max() <= high


def test_near_lossless_is_refused_for_pixel_groups(ictx_bundle: Path) -> None:
    import edgevae.runtime as ev
    from edgevae.runtime.errors import InputError

    with pytest.raises(InputError, match="codes pixels in groups, for lossless compression only"):
        ev.NearLosslessCodec(ev.load(ictx_bundle, threads=1), max_error=2).compress(synthetic_images(3))


@pytest.mark.parametrize("which", ["context-is-plain", "integer-is-float", "integer-has-groups"])
def test_wrong_sources_are_one_line_errors(which: str, context_bundle: Path, integer_source: Path,
                                           float_bundle: Path, ictx_bundle: Path, tmp_path: Path) -> None:
    from edgevae.training.cli import main

    context, integer, message = {
        "context-is-plain": (float_bundle, integer_source, "not a float context bundle"),
        "integer-is-float": (context_bundle, float_bundle, "not an integer bundle without pixel groups"),
        "integer-has-groups": (context_bundle, ictx_bundle, "not an integer bundle without pixel groups"),
    }[which]
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["integer-context", str(context), "--integer", str(integer), "--epochs", "0",
                                       "--out", str(run)])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    from edgevae.training.cli import main

    result = CliRunner().invoke(main, ["integer-context-export", str(tmp_path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no checkpoint" in result.output
    assert not (tmp_path / "out").exists()


def test_a_mismatched_manifest_description_is_refused(ictx_bundle: Path, context_bundle: Path, tmp_path: Path) -> None:
    """An integer context bundle must describe its context graph as the integer one."""
    from edgevae.runtime.bundle import read_manifest
    from edgevae.runtime.errors import BundleError

    other = tmp_path / "b"
    shutil.copytree(ictx_bundle, other)
    manifest = json.loads((other / "model.json").read_text())
    float_side = json.loads((context_bundle / "model.json").read_text())["graphs"]["context"]
    manifest["graphs"]["context"]["inputs"] = float_side["inputs"]
    (other / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="context inputs .* disagree with the bundle's own shapes"):
        read_manifest(other)


def test_the_shipped_bundle_is_reproducible_and_codes_real_images_smaller_than_its_integer_source() -> None:
    """README records the commands that made it; its encoder and decoder are fashion-mnist-exact's;
    on real test images its lossless files are exact and smaller than fashion-mnist-exact's."""
    import edgevae.runtime as ev
    from edgevae.exported import BUNDLES
    from edgevae.training.data import load_fashion_mnist

    manifest = json.loads((SHIPPED / "model.json").read_text())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    run = "runs/fm-ctx2-exact"
    assert manifest["training"]["command"].replace("RUN_DIR", run) in readme
    assert f"edgevae-train integer-context-export {run} -o exported/{SHIPPED.name}\n" in readme
    source = BUNDLES / "fashion-mnist-exact"
    for graph in ("encoder.onnx", "decoder.onnx"):
        assert (SHIPPED / graph).read_bytes() == (source / graph).read_bytes()
    images = load_fashion_mnist().test[:200]
    ours = ev.LosslessCodec(ev.load(SHIPPED, threads=1))
    data = ours.compress(images)
    assert np.array_equal(ours.decompress(data), images)
    assert len(data) < 0.97 * len(ev.LosslessCodec(ev.load(source, threads=1)).compress(images))
    assert manifest["evaluation"]["nelbo_bpd"] < manifest["evaluation"]["source_nelbo_bpd"] - 0.1
