"""Context bundles (training/context.py; model.json ``pixel_groups``): pixels coded in groups, each
group after the first with the context graph's mixture given the groups before it. Training starts
at the source VAE, export checks context.onnx against PyTorch, lossless files round-trip exactly,
the fingerprint covers the context graph, and what a context bundle cannot do is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgevae.runtime import contract
from edgevae.runtime.errors import BundleError, InputError

from conftest import synthetic_images


def test_group_map_tiles_the_image_and_orders_neighbours_first() -> None:
    ids = np.array(contract.pixel_group_map(4, 6, 8))
    assert sorted(np.unique(ids)) == [0, 1, 2, 3] and all((ids == g).sum() == 12 for g in range(4))
    # after groups 0 and 1 (a checkerboard) every other pixel has its four direct neighbours known
    known = np.pad(ids < 2, 1)
    inner = [(r, c) for r in range(6) for c in range(8) if ids[r, c] >= 2]
    assert all(known[r, c + 1] and known[r + 2, c + 1] and known[r + 1, c] and known[r + 1, c + 2]
               for r, c in inner if 0 < r < 5 and 0 < c < 7)
    assert np.array_equal(np.array(contract.pixel_group_map(2, 2, 2)), [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"pixel_groups 3 needs a pixel_tile \(there are defaults for 1, 2, 4\)"):
        contract.pixel_group_map(3, 4, 4)


def test_a_tile_repeats_over_the_image_whatever_its_shape() -> None:
    assert contract.pixel_group_map(3, 3, 5, [[0, 1, 2]]) == [[0, 1, 2, 0, 1]] * 3
    assert contract.pixel_group_map(4, 3, 3, [[0, 1], [2, 3]]) == [[0, 1, 0], [2, 3, 2], [0, 1, 0]]
    assert contract.tile_text(contract.pixel_tile(4, [[0, 1], [2, 3]])) == "0,1/2,3"
    for groups, tile, message in ((3, [[0, 1], [2]], "all rows as long"), (3, [[0, 1, 3]], "every group 0..2"),
                                  (1, [[0] * 9] * 2, "1..8 rows of 1..8"), (1, [], "1..8 rows")):
        with pytest.raises(ValueError, match=message):
            contract.pixel_tile(groups, tile)
    with pytest.raises(ValueError, match="pixel_groups 65 is not an integer in 1..64"):
        contract.pixel_tile(65)


def test_training_starts_at_the_source_and_the_context_sees_only_known_pixels(float_bundle: Path) -> None:
    from edgevae.training.context import ContextConfig, build, evaluate

    _, _, model = build(ContextConfig(source=str(float_bundle), hidden=4, layers=2))
    images = synthetic_images(8, 5)
    start = evaluate(model, images)
    assert start["nelbo_bpd"] == pytest.approx(start["decoder_only_nelbo_bpd"], abs=1e-9)  # identity at start
    torch.nn.init.normal_(model.context.head.weight, std=0.1)
    x = torch.from_numpy(images)
    with torch.inference_mode():
        mixture = model.vae.decode_params(model.vae.encoder(x)[0])
        known = model.masks[:2].any(0).expand(len(x), 1, 28, 28).to(torch.uint8)
        other = x.clone()
        other[known == 0] = 255 - other[known == 0]  # change every unknown pixel
        a = model.context(*mixture, x, known)
        b = model.context(*mixture, other, known)
        c = model.context(*mixture, other, torch.ones_like(known))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[1], c[1])


def test_the_run_and_export_record_what_was_made(context_run: Path, context_bundle: Path, float_bundle: Path) -> None:
    from edgevae.runtime import manifest as schema

    lines = [json.loads(line) for line in (context_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1]
    assert lines[0]["nelbo_bpd"] == pytest.approx(lines[0]["decoder_only_nelbo_bpd"], abs=1e-9)
    manifest = schema.validate(json.loads((context_bundle / "model.json").read_text()))
    assert manifest["pixel_groups"] == 4 and "codec" not in manifest and "role" not in manifest
    assert manifest["training"]["command"].startswith(f"edgevae-train context {float_bundle} --groups 4")
    parity = manifest["parity"]["max_abs_diff"]
    assert max(parity["context"].values()) <= contract.PARITY_TOLERANCE
    assert manifest["evaluation"]["nelbo_bpd"] == pytest.approx(lines[-1]["nelbo_bpd"], abs=1e-9)


def test_lossless_round_trips_exactly_in_one_file_and_single_files(context_bundle: Path) -> None:
    import edgevae.runtime as ev

    codec = ev.LosslessCodec(ev.load(context_bundle, threads=1))
    images = synthetic_images(70, 9)  # several chains in two lanes
    data = codec.compress(images)
    assert np.array_equal(codec.decompress(data), images)
    one = codec.compress(images[3])
    assert np.array_equal(codec.decompress(one)[0], images[3])
    # the same bytes whatever onnxruntime's thread count
    assert ev.LosslessCodec(ev.load(context_bundle, threads=2)).compress(images) == data


def test_containers_name_the_context_graph_in_their_fingerprint(context_bundle: Path, float_bundle: Path,
                                                                tmp_path: Path) -> None:
    import edgevae.runtime as ev
    from edgevae.runtime.bundle import read_bundle
    from edgevae.runtime.errors import ContainerError

    data = ev.LosslessCodec(ev.load(context_bundle, threads=1)).compress(synthetic_images(3, 2))
    with pytest.raises(ContainerError):
        ev.LosslessCodec(ev.load(float_bundle, threads=1)).decompress(data)
    # the same encoder and decoder with another context graph is another model
    other = tmp_path / "other"
    shutil.copytree(context_bundle, other)
    manifest = json.loads((other / "model.json").read_text())
    base = read_bundle(other).fingerprint
    manifest["graphs"]["context"]["sha256"] = "0" * 64
    (other / "model.json").write_text(json.dumps(manifest))
    from edgevae.runtime.bundle import read_manifest

    assert read_manifest(other).fingerprint != base


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.update(pixel_groups=3), "pixel_groups 3 needs a pixel_tile"),
    (lambda m: m.update(pixel_tile=[[0, 1], [2, 4]]), "pixel_tile must hold every group 0..3"),
    (lambda m: m["graphs"].pop("context"), "graphs.context must be given exactly when pixel_groups > 1"),
    (lambda m: m.pop("pixel_groups"), "graphs.context must be given exactly when pixel_groups > 1"),
    (lambda m: m.update(arithmetic="integer"), "encoder outputs .* disagree with the bundle's own shapes"),
])
def test_inconsistent_manifests_are_refused_in_one_line(context_bundle: Path, change, message: str) -> None:
    from edgevae.runtime import manifest as schema

    manifest = json.loads((context_bundle / "model.json").read_text())
    change(manifest)
    with pytest.raises(BundleError, match=message) as info:
        schema.validate(manifest)
    assert "\n" not in str(info.value)


def test_the_runtime_likelihood_is_the_trained_grouped_likelihood(context_run: Path, context_bundle: Path) -> None:
    import edgevae.runtime as ev
    from edgevae.runtime import likelihood
    from edgevae.training.context import load_run

    model = load_run(context_run)[-1]
    runtime = ev.load(context_bundle, threads=1)
    images = synthetic_images(6, 8)
    z = np.random.default_rng(0).standard_normal((6, model.config.latent_dim)).astype(np.float32)
    with torch.inference_mode():
        want, _ = model.group_nll(torch.from_numpy(images), torch.from_numpy(z))
    got = runtime.log_likelihood(images, z)
    np.testing.assert_allclose(-got, want.numpy(), rtol=1e-4)
    plain = likelihood.log_likelihood(images, runtime.likelihood(z))
    assert not np.allclose(got, plain, rtol=1e-4)  # the groups are not the decoder alone
    groups = runtime.group_log_likelihoods(images, z)
    assert groups.shape == (6, 4) and np.allclose(groups.sum(1), got)
    alone = runtime.group_log_likelihoods(images, z, context=False)
    assert np.allclose(alone.sum(1), plain) and np.array_equal(alone[:, 0], groups[:, 0])  # group 0 has no context
    nelbo, _ = likelihood.negative_elbo(runtime, images, samples=2)
    assert np.all(np.isfinite(nelbo))


def test_what_a_context_bundle_cannot_do_is_refused_in_one_line(context_bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    import edgevae.runtime as ev
    from edgevae.runtime.cli import main

    model = ev.load(context_bundle, threads=1)
    with pytest.raises(InputError, match="lossless compression only"):
        ev.NearLosslessCodec(model, 4).compress(synthetic_images(2, 1))
    monkeypatch.chdir(tmp_path)
    Image.fromarray(synthetic_images(1, 1)[0, 0]).save("a.png")
    for args in (["--max-error", "4"], []):
        result = CliRunner().invoke(main, ["compress", "a.png", "-o", "a.evz", "--model", str(context_bundle), *args])
        assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
        assert not Path("a.evz").exists()


def test_cli_compresses_and_decompresses_losslessly(context_bundle: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from edgevae.runtime.cli import main

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    images = synthetic_images(4, 4)
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(f"{i}.png")
    result = runner.invoke(main, ["compress", *[f"{i}.png" for i in range(4)], "--lossless", "--model",
                                  str(context_bundle), "-o", "all.evz"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["decompress", "all.evz", "-o", "out", "--model", str(context_bundle)])
    assert result.exit_code == 0, result.output
    back = sorted(Path("out").glob("*.png"))
    assert len(back) == 4 and all(np.array_equal(np.array(Image.open(p)), image[0]) for p, image in zip(back, images))


def test_help_teaches_the_two_commands() -> None:
    from edgevae.training.cli import main

    for command, phrase in (("context", "pixel groups"), ("context-export", "lossless")):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and phrase in result.output


def test_info_says_the_bundle_codes_pixel_groups(context_bundle: Path) -> None:
    from edgevae.runtime.cli import main

    result = CliRunner().invoke(main, ["info", "--model", str(context_bundle)])
    assert result.exit_code == 0, result.output
    assert "pixels in 4 groups" in result.output


def test_a_frozen_vae_run_with_its_own_tile_keeps_the_source_graphs_and_codes_exactly(
        float_bundle: Path, tmp_path: Path) -> None:
    """--tile: 3 groups (no default tile) over a 2x3 tile; model.json records it, and lossless coding
    and the likelihood follow it."""
    import edgevae.runtime as ev
    from edgevae.runtime import manifest as schema
    from edgevae.runtime.cli import main as edgevae_cli
    from edgevae.training.cli import main
    from edgevae.training.context import load_run

    run, bundle = tmp_path / "run", tmp_path / "ctx"
    result = CliRunner().invoke(main, ["context", str(float_bundle), "--frozen-vae", "--tile", "0,1,2/2,0,1",
                                       "--hidden", "4", "--layers", "1", "--epochs", "2", "--stop-after", "1",
                                       "--batch-size", "32", "--out", str(run)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["context-export", str(run), "-o", str(bundle)])
    assert result.exit_code == 0 and "3 pixel groups" in result.output, result.output
    for name in ("encoder.onnx", "decoder.onnx"):
        assert (bundle / name).read_bytes() == (float_bundle / name).read_bytes()
    manifest = schema.validate(json.loads((bundle / "model.json").read_text()))
    assert manifest["pixel_groups"] == 3 and manifest["pixel_tile"] == [[0, 1, 2], [2, 0, 1]]
    command = manifest["training"]["command"]
    assert "--frozen-vae" in command and "--groups 3 --tile 0,1,2/2,0,1 " in command and command.endswith("--stop-after 1")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["decoder_only_nelbo_bpd"] == pytest.approx(lines[0]["decoder_only_nelbo_bpd"], abs=1e-9)

    model = ev.load(bundle, threads=1)
    codec = ev.LosslessCodec(model)
    images = synthetic_images(5, 3)
    assert np.array_equal(codec.decompress(codec.compress(images)), images)
    trained = load_run(run)[-1]
    z = np.random.default_rng(1).standard_normal((5, trained.config.latent_dim)).astype(np.float32)
    with torch.inference_mode():
        want, _ = trained.group_nll(torch.from_numpy(images), torch.from_numpy(z))
    np.testing.assert_allclose(-model.log_likelihood(images, z), want.numpy(), rtol=1e-4)
    info = CliRunner().invoke(edgevae_cli, ["info", "--model", str(bundle)])
    assert "pixels in 3 groups (tile 0,1,2/2,0,1)" in info.output


@pytest.mark.slow
@pytest.mark.parametrize(("name", "run"), [("fashion-mnist-context", "runs/fm-context"),
                                           ("fashion-mnist-context2", "runs/fm-context2")])
def test_the_shipped_context_bundles_are_reproducible_and_code_smaller_than_their_source(name: str, run: str) -> None:
    """README records the commands that made each shipped context bundle; its graphs are
    fashion-mnist's; on real test images its lossless files are exact and smaller than the source's."""
    import edgevae.runtime as ev
    from edgevae.exported import BUNDLES
    from edgevae.training.data import load_fashion_mnist

    bundle, source = BUNDLES / name, BUNDLES / "fashion-mnist"
    manifest = json.loads((bundle / "model.json").read_text())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert manifest["training"]["command"].replace("RUN_DIR", run) in readme
    assert f"edgevae-train context-export {run} -o exported/{name}\n" in readme
    for graph in ("encoder.onnx", "decoder.onnx"):
        assert (bundle / graph).read_bytes() == (source / graph).read_bytes()
    images = load_fashion_mnist().test[:300]
    ours, theirs = (ev.LosslessCodec(ev.load(b, threads=1)) for b in (bundle, source))
    data = ours.compress(images)
    assert np.array_equal(ours.decompress(data), images)
    assert len(data) < 0.98 * len(theirs.compress(images))
    assert manifest["evaluation"]["nelbo_bpd"] < manifest["evaluation"]["decoder_only_nelbo_bpd"] - 0.05


def test_a_context_graph_of_the_wrong_signature_is_refused_in_one_line(context_bundle: Path, tmp_path: Path) -> None:
    import edgevae.runtime as ev
    from edgevae.runtime.bundle import sha256_file

    other = tmp_path / "other"
    shutil.copytree(context_bundle, other)
    shutil.copyfile(other / "decoder.onnx", other / "context.onnx")  # a real graph, the wrong one
    manifest = json.loads((other / "model.json").read_text())
    manifest["graphs"]["context"]["sha256"] = sha256_file(other / "context.onnx")
    (other / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="context.onnx") as info:
        ev.load(other)
    assert "\n" not in str(info.value)
    (other / "context.onnx").unlink()
    with pytest.raises(BundleError, match="context.onnx"):
        ev.load(other)


def test_the_context_graph_runs_in_chunks_and_on_nothing(context_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgevae.runtime as ev
    import edgevae.runtime.model as model_module

    model = ev.load(context_bundle, threads=1)
    images = synthetic_images(5, 3)
    z = np.zeros((5, model.latent_dim), np.float32)
    whole = model.log_likelihood(images, z)
    monkeypatch.setattr(model_module, "CHUNK", 2)
    assert np.array_equal(model.log_likelihood(images, z), whole)
    params = model.likelihood(z[:0])
    assert model.context_likelihood(params, images[:0], np.ones((1, 1, 28, 28))).logits.shape == (0, *params.logits.shape[1:])
