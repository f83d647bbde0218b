"""edgevae.training: data, likelihood, training loop (seeds, resume, run folder), evaluation, CLI."""

from __future__ import annotations

import gzip
import json
import math
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import TINY_SHAPE, synthetic_images, write_pngs
from edgevae.runtime.errors import DataError, InputError
from edgevae.training import data as data_mod
from edgevae.training import likelihood
from edgevae.training.cli import main as train_cli
from edgevae.training.data import (
    Dataset,
    fashion_mnist_folder,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    read_idx_images,
)
from edgevae.training.evaluate import evaluate_model
from edgevae.training.model import VAE, ModelConfig
from edgevae.training.train import TrainConfig, load_checkpoint, model_from_checkpoint, train, train_command



@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine spinning threads cost
    far more than they give; results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- data: IDX files ----------------------------------------------------------------------------


def write_idx(path: Path, images: np.ndarray, magic: int = 0x00000803) -> Path:
    """Write uint8 images (N, H, W) as an IDX3 file, gzipped if the name ends in .gz."""
    n, h, w = images.shape
    raw = struct.pack(">IIII", magic, n, h, w) + images.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def fake_fashion_mnist(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A Fashion-MNIST-shaped folder with the two image IDX files."""
    rng = np.random.default_rng(seed)
    train_images = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", train_images)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", test_images)
    return train_images, test_images


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_raw_and_gz(name: str, tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    got = read_idx_images(write_idx(tmp_path / name, images))
    assert got.dtype == np.uint8 and got.shape == (5, 1, 7, 3)
    np.testing.assert_array_equal(got[:, 0], images)


@pytest.mark.parametrize("damage, phrase", [
    ("labels_magic", "not a valid IDX3"),
    ("truncated", "not a valid IDX3"),
    ("too_short", "too short"),
    ("not_gzip", "cannot read IDX"),
    ("missing", "cannot read IDX"),
])
def test_read_idx_refuses_bad_files(damage: str, phrase: str, tmp_path: Path) -> None:
    images = np.zeros((4, 28, 28), np.uint8)
    if damage == "labels_magic":
        path = write_idx(tmp_path / "f", images, magic=0x00000801)
    elif damage == "truncated":
        path = write_idx(tmp_path / "f", images)
        path.write_bytes(path.read_bytes()[:-5])
    elif damage == "too_short":
        path = tmp_path / "f"
        path.write_bytes(b"\x00\x00\x08\x03")
    elif damage == "not_gzip":
        path = tmp_path / "f.gz"
        path.write_bytes(b"plain bytes, no gzip header")
    else:
        path = tmp_path / "absent"
    with pytest.raises(DataError, match=phrase):
        read_idx_images(path)


def test_load_fashion_mnist_from_a_folder(tmp_path: Path) -> None:
    train_images, test_images = fake_fashion_mnist(tmp_path / "raw", 6, 3, gz=False)
    data = load_fashion_mnist(tmp_path / "raw")
    assert data.name == "fashion-mnist" and data.image_shape == (1, 28, 28)
    np.testing.assert_array_equal(data.train[:, 0], train_images)
    np.testing.assert_array_equal(data.test[:, 0], test_images)
    assert data.fingerprint.startswith("sha256:") and len(data.fingerprint) == 7 + 64
    # Same pixels gzipped: same fingerprint; other pixels: another.
    fake_fashion_mnist(tmp_path / "gz", 6, 3, gz=True)
    assert load_fashion_mnist(tmp_path / "gz").fingerprint == data.fingerprint
    fake_fashion_mnist(tmp_path / "other", 6, 3, gz=True, seed=1)
    assert load_fashion_mnist(tmp_path / "other").fingerprint != data.fingerprint


@pytest.mark.slow
def test_the_installed_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real data set, found where Debian's dataset-fashion-mnist package puts it."""
    monkeypatch.delenv(data_mod.DATA_ENV, raising=False)
    assert fashion_mnist_folder() == data_mod.DEBIAN_FASHION_MNIST
    data = load_fashion_mnist()
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert data.train.dtype == np.uint8 and data.train.max() == 255 and data.test.min() == 0
    # Fashion-MNIST's published mean pixel (0.2860 of full scale, training set).
    assert data.train.mean() / 255 == pytest.approx(0.2860, abs=5e-4)


@pytest.fixture
def three_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """--data, $EDGEVAE_DATA and Debian's folder, each holding a distinguishable data set."""
    places = {"flag": tmp_path / "flag", "env": tmp_path / "env", "debian": tmp_path / "debian"}
    for i, folder in enumerate(places.values()):
        fake_fashion_mnist(folder, 2 + i, 1, gz=bool(i % 2), seed=i)
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", places["debian"])
    monkeypatch.setenv(data_mod.DATA_ENV, str(places["env"]))
    return places


def test_data_search_order(three_places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert fashion_mnist_folder(three_places["flag"]) == three_places["flag"]
    assert len(load_dataset("fashion-mnist", data_dir=three_places["flag"]).train) == 2
    assert fashion_mnist_folder() == three_places["env"]
    assert len(load_dataset("fashion-mnist").train) == 3
    # A folder lacking one of the two files is passed over.
    for test_file in three_places["env"].glob("t10k-images-idx3-ubyte*"):
        test_file.unlink()
    assert fashion_mnist_folder() == three_places["debian"]
    monkeypatch.delenv(data_mod.DATA_ENV)
    assert fashion_mnist_folder() == three_places["debian"]
    assert len(load_dataset("fashion-mnist").train) == 4


@pytest.fixture
def no_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    monkeypatch.delenv(data_mod.DATA_ENV, raising=False)


def test_missing_data_says_how_to_get_it(no_fashion_mnist: None, tmp_path: Path) -> None:
    for data_dir in (None, tmp_path):
        with pytest.raises(DataError) as caught:
            load_dataset("fashion-mnist", data_dir=data_dir)
        message = str(caught.value)
        for phrase in ("apt-get install dataset-fashion-mnist", "--data", "EDGEVAE_DATA", "t10k-images-idx3-ubyte"):
            assert phrase in message
        assert "\n" not in message


def test_missing_data_in_the_cli(no_fashion_mnist: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cli, ["train", "--dataset", "fashion-mnist", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Fashion-MNIST not found") and "apt-get" in lines[0]
    assert not (tmp_path / "run").exists()


# -- data: image folders ------------------------------------------------------------------------


def test_image_folder_loading(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_pngs(synthetic_images(6, seed=1), root / "gray")
    colour = synthetic_images(4, seed=2, shape=(3, 40, 30))
    write_pngs(colour, root / "nested" / "deeper" / "rgb")
    Image.fromarray(colour[0].transpose(1, 2, 0)).save(root / "nested" / "photo.jpg")
    (root / "nested" / "notes.txt").write_text("not an image")

    data = load_image_folder(root, (1, 28, 28), test_fraction=0.25, seed=0)
    assert data.train.dtype == np.uint8 and data.image_shape == (1, 28, 28)
    assert len(data.train) + len(data.test) == 11 and len(data.test) == 3
    rows = {image.tobytes() for image in np.concatenate([data.train, data.test])}
    assert len(rows) == 11  # every image once: the split is a partition
    again = load_image_folder(root, (1, 28, 28), test_fraction=0.25, seed=0)
    np.testing.assert_array_equal(again.test, data.test)
    assert again.fingerprint == data.fingerprint
    other = load_image_folder(root, (1, 28, 28), test_fraction=0.25, seed=5)
    assert {i.tobytes() for i in other.test} != {i.tobytes() for i in data.test}

    colour_data = load_image_folder(root, (3, 16, 16), test_fraction=0.1)
    assert colour_data.image_shape == (3, 16, 16) and len(colour_data.test) == 1


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "absent", TINY_SHAPE)
    write_pngs(synthetic_images(1), tmp_path / "one")
    with pytest.raises(DataError, match="at least 2 images"):
        load_image_folder(tmp_path / "one", TINY_SHAPE)


# -- likelihood ---------------------------------------------------------------------------------


def mixture(k: int, pixels: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, k, *pixels, generator=g) * 2
    means = torch.tanh(torch.randn(1, k, *pixels, generator=g) * 1.5)
    log_scales = torch.rand(1, k, *pixels, generator=g) * 6 - 6.5  # from very sharp to broad
    return logits, means, log_scales


def masses_of_all_levels(logits: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """p(v) for v = 0..255 at every pixel: (256, C, H, W)."""
    pixels = logits.shape[2:]
    levels = torch.arange(256, dtype=torch.float32).view(256, 1, 1, 1).expand(256, *pixels)
    expand = lambda t: t.expand(256, *t.shape[1:])  # noqa: E731
    return likelihood.log_prob(levels, expand(logits), expand(means), expand(log_scales)).double().exp()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_256_bin_masses_sum_to_one(seed: int) -> None:
    masses = masses_of_all_levels(*mixture(3, (2, 4, 5), seed))
    np.testing.assert_allclose(masses.sum(0).numpy(), 1.0, atol=2e-4)


def test_edge_bins_take_the_tails() -> None:
    """A sharp logistic centred on level 0 (255) puts nearly all its mass in that edge bin.

    At the smallest scale (s = e^-7) the edge bin holds sigmoid((1/255) / s) = 0.9866 of it.
    """
    means = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 1, 2)
    logits = torch.zeros(1, 1, 1, 1, 2)
    log_scales = torch.full((1, 1, 1, 1, 2), likelihood.MIN_LOG_SCALE)
    masses = masses_of_all_levels(logits, means, log_scales)
    assert masses[0, 0, 0, 0] == pytest.approx(0.9866, abs=1e-3)
    assert masses[255, 0, 0, 1] == pytest.approx(0.9866, abs=1e-3)
    np.testing.assert_allclose(masses.sum(0).numpy(), 1.0, atol=2e-4)


def test_nll_is_finite_at_levels_0_and_255_even_for_extreme_parameters() -> None:
    images = torch.tensor([0.0, 255.0, 0.0, 255.0]).view(4, 1, 1, 1)
    means = torch.tensor([1.0, -1.0, -1.0, 1.0]).view(4, 1, 1, 1, 1).requires_grad_()
    log_scales = torch.full((4, 1, 1, 1, 1), likelihood.MIN_LOG_SCALE).requires_grad_()
    logits = torch.zeros(4, 1, 1, 1, 1)
    log_p = likelihood.log_prob(images, logits, means, log_scales)
    assert torch.isfinite(log_p).all()
    assert (log_p[:2] < -100).all()  # far from the mean: very unlikely, yet a finite number of bits
    assert (log_p[2:] > math.log(0.98)).all()  # on the mean: the edge bin takes nearly everything
    (-log_p.sum()).backward()
    assert torch.isfinite(means.grad).all() and torch.isfinite(log_scales.grad).all()


def test_mean_pixels_and_sampling_stay_in_range() -> None:
    logits, means, log_scales = mixture(4, (1, 6, 6), 3)
    mean = likelihood.mean_pixels(logits, means)
    assert mean.min() >= 0 and mean.max() <= 255
    draws = likelihood.sample(logits, means, log_scales, generator=torch.Generator().manual_seed(0))
    assert draws.dtype == torch.uint8 and draws.shape == (1, 1, 6, 6)


def test_mean_pixels_of_one_component_is_exactly_the_softmax_formula() -> None:
    logits, means, _ = mixture(1, (4, 6, 6), 4)
    general = ((torch.softmax(logits, dim=1) * means).sum(dim=1) + 1.0) * likelihood.PIXEL_SCALE
    assert torch.equal(likelihood.mean_pixels(logits, means), general.clamp(0.0, 255.0))


# -- training loop ------------------------------------------------------------------------------

SMALL = ModelConfig(image_shape=TINY_SHAPE, latent_dim=4, channels=(4, 8), res_blocks=0, mixture_components=2)


@pytest.fixture(scope="module")
def small_data() -> Dataset:
    images = synthetic_images(56, seed=3)
    return Dataset("synthetic", images[:48], images[48:], "sha256:" + "0" * 64)


def small_config(**changes: object) -> TrainConfig:
    settings = dict(dataset="synthetic", epochs=2, batch_size=16, warmup_steps=2, seed=0)
    settings.update(changes)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def quiet(_: str) -> None:
    pass


@pytest.mark.slow
def test_seeded_training_is_repeatable(small_data: Dataset, tmp_path: Path) -> None:
    train(small_data, SMALL, small_config(seed=7, epochs=1), tmp_path / "a", log=quiet)
    train(small_data, SMALL, small_config(seed=7, epochs=1), tmp_path / "b", log=quiet)
    train(small_data, SMALL, small_config(seed=8, epochs=1), tmp_path / "c", log=quiet)
    assert_same_weights(state(tmp_path / "a"), state(tmp_path / "b"))
    assert any(not torch.equal(x, y) for x, y in zip(state(tmp_path / "a").values(), state(tmp_path / "c").values()))


class InterruptingBar:
    """A progress bar (the protocol ``train`` expects) that presses Ctrl-C at a chosen step."""

    def __init__(self, label: str, stop_in: str, stop_at: int) -> None:
        self.label, self.stop, self.stop_at, self.steps, self.loss = label, stop_in, stop_at, 0, ""

    def __enter__(self) -> "InterruptingBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        self.steps += n
        if self.label.startswith(self.stop) and self.steps == self.stop_at:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_after_ctrl_c_equals_an_unbroken_run(small_data: Dataset, tmp_path: Path) -> None:
    config = small_config(epochs=3)
    train(small_data, SMALL, config, tmp_path / "unbroken", log=quiet)

    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        train(small_data, SMALL, config, broken, log=quiet,
              progress=lambda total, label: InterruptingBar(label, "epoch 2/", 2))
    # Ctrl-C mid-epoch 2 leaves the complete epoch 1: a usable checkpoint, no temp file.
    checkpoint = load_checkpoint(broken)
    assert checkpoint["epoch"] == 1
    model_from_checkpoint(checkpoint)
    assert sorted(p.name for p in broken.iterdir()) == ["config.json", "last.pt", "metrics.jsonl"]
    assert len((broken / "metrics.jsonl").read_text().splitlines()) == 1

    train(small_data, SMALL, config, broken, resume=True, log=quiet)
    assert_same_weights(state(tmp_path / "unbroken"), state(broken))
    unbroken_rows = [json.loads(line) for line in (tmp_path / "unbroken" / "metrics.jsonl").read_text().splitlines()]
    resumed_rows = [json.loads(line) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    for row in unbroken_rows + resumed_rows:
        row.pop("seconds")
    assert resumed_rows == unbroken_rows


def test_resume_refuses_other_data_and_missing_runs(small_data: Dataset, tmp_path: Path) -> None:
    train(small_data, SMALL, small_config(epochs=1), tmp_path / "run", log=quiet)
    other = Dataset("synthetic", small_data.train[:-1], small_data.test, "sha256:" + "1" * 64)
    with pytest.raises(DataError, match="fingerprint"):
        train(other, SMALL, small_config(epochs=1), tmp_path / "run", resume=True, log=quiet)
    with pytest.raises(InputError, match="no checkpoint"):
        train(small_data, SMALL, small_config(), tmp_path / "never", resume=True, log=quiet)


def test_train_refuses_an_existing_run(small_data: Dataset, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(small_data, SMALL, small_config(epochs=1), run, log=quiet)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(InputError, match="already holds a run; pass --resume"):
        train(small_data, SMALL, small_config(epochs=1, seed=1), run, log=quiet)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_train_refuses_data_of_another_shape(small_data: Dataset, tmp_path: Path) -> None:
    colour = ModelConfig(image_shape=(3, 28, 28), latent_dim=4, channels=(4, 8), res_blocks=0, mixture_components=2)
    with pytest.raises(DataError, match="configured for"):
        train(small_data, colour, small_config(), tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()


def test_train_command_reproduces_the_configuration(tiny_run: Path) -> None:
    checkpoint = load_checkpoint(tiny_run)
    command = train_command(checkpoint, "runs/again")
    argv = shlex.split(command)
    assert argv[:2] == ["edgevae-train", "train"]
    with train_cli.commands["train"].make_context("train", argv[2:]) as ctx:
        params = ctx.params
    model, config = checkpoint["model_config"], checkpoint["train_config"]
    assert params["latent_dim"] == model["latent_dim"] and params["components"] == model["mixture_components"]
    assert params["widths"] == ",".join(map(str, model["channels"])) and params["res_blocks"] == model["res_blocks"]
    assert params["image_shape"] == ",".join(map(str, model["image_shape"]))
    for key in ("dataset", "epochs", "batch_size", "lr", "beta", "kl_warmup_epochs", "free_bits", "seed"):
        assert params[key] == config[key], key
    assert params["run_dir"] == "runs/again"
    assert "--distortion-sigma" not in argv and params["distortion_sigma"] == 0  # a plain ELBO run says so by omission


@pytest.mark.slow
def test_distortion_term_trains_a_different_model_and_is_in_the_command(small_data: Dataset, tmp_path: Path) -> None:
    train(small_data, SMALL, small_config(epochs=1), tmp_path / "elbo", log=quiet)
    train(small_data, SMALL, small_config(epochs=1, distortion_sigma=8.0), tmp_path / "codec", log=quiet)
    assert any(not torch.equal(x, y) for x, y in zip(state(tmp_path / "elbo").values(),
                                                     state(tmp_path / "codec").values()))
    checkpoint = load_checkpoint(tmp_path / "codec")
    argv = shlex.split(train_command(checkpoint, "runs/again"))
    with train_cli.commands["train"].make_context("train", argv[2:]) as ctx:
        assert ctx.params["distortion_sigma"] == 8.0


@pytest.mark.slow
def test_nearest_upsampling_trains_and_is_in_the_command(small_data: Dataset, tmp_path: Path) -> None:
    nearest = ModelConfig(**{**SMALL.to_dict(), "upsample": "nearest"})
    model = VAE(nearest)
    assert any(isinstance(m, torch.nn.Upsample) for m in model.decoder.modules())
    assert not any(isinstance(m, torch.nn.PixelShuffle) for m in model.decoder.modules())
    # Same output geometry and the same number of weights as the depth-to-space decoder but one level's
    # bias: conv(C, 4C') + shuffle has 4C' biases where resize + conv(C, C') has C'.
    assert model.decoder(torch.zeros(2, SMALL.latent_dim)).shape == VAE(SMALL).decoder(torch.zeros(2, SMALL.latent_dim)).shape
    train(small_data, nearest, small_config(epochs=1), tmp_path / "run", log=quiet)
    checkpoint = load_checkpoint(tmp_path / "run")
    assert ModelConfig.from_dict(checkpoint["model_config"]) == nearest
    argv = shlex.split(train_command(checkpoint, "runs/again"))
    with train_cli.commands["train"].make_context("train", argv[2:]) as ctx:
        assert ctx.params["upsample"] == "nearest"


def test_configs_from_before_the_upsample_choice_mean_pixel_shuffle(tiny_run: Path) -> None:
    saved = load_checkpoint(tiny_run)["model_config"]
    old = {k: v for k, v in saved.items() if k != "upsample"}
    assert ModelConfig.from_dict(old).upsample == "pixel-shuffle"
    assert "--upsample" not in train_command(load_checkpoint(tiny_run))  # the default says so by omission


def test_train_cli_refuses_an_unknown_upsample_mode(image_folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cli, ["train", "--dataset", str(image_folder), "--upsample", "bilinear",
                                            "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr == "Error: --upsample must be one of pixel-shuffle, nearest, got 'bilinear'\n"
    assert not (tmp_path / "run").exists()


def test_loss_terms_sse_is_the_squared_error_of_the_mean_image(small_data: Dataset) -> None:
    torch.manual_seed(0)
    model = VAE(SMALL)
    x = torch.from_numpy(small_data.test[:5])
    torch.manual_seed(1)
    terms = model.loss_terms(x)
    torch.manual_seed(1)
    mean, logvar = model.encoder(x)
    z = model.reparameterize(mean, logvar)
    logits, means, _ = model.split(model.decoder(z))
    expected = (likelihood.mean_pixels(logits, means) - x.float()).pow(2).flatten(1).sum(1)
    assert torch.allclose(terms.sse, expected) and terms.sse.shape == (5,) and bool((terms.sse > 0).all())


def test_train_cli_refuses_a_negative_distortion_sigma(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cli, ["train", "--distortion-sigma", "-1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.stderr == "Error: --distortion-sigma must be >= 0 (0 = off)\n"
    assert not (tmp_path / "run").exists()


# -- evaluation ---------------------------------------------------------------------------------


def test_iwae_bound_is_at_most_the_negative_elbo(tiny_run: Path) -> None:
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    images = synthetic_images(12, seed=77)
    one = evaluate_model(model, images, k=1, batch_size=5)
    assert one["iwae_bpd"] == pytest.approx(one["nelbo_bpd"], abs=1e-9)  # k=1: the same bound
    many = evaluate_model(model, images, k=8, batch_size=5)
    assert many["images"] == 12 and many["k"] == 8
    # Jensen: the log of a mean is at least the mean of the logs, on the very same samples.
    assert many["iwae_bpd"] <= many["nelbo_bpd"] + 1e-9
    for key in ("nelbo_bpd", "iwae_bpd", "psnr_db"):
        assert math.isfinite(many[key])
    assert 0 < many["nelbo_bpd"] < 8  # a real number of bits per 8-bit pixel
    other_seed = evaluate_model(model, images, k=8, batch_size=5, seed=1)
    assert other_seed["nelbo_bpd"] != pytest.approx(many["nelbo_bpd"], abs=1e-12)
    again = evaluate_model(model, images, k=8, batch_size=5)
    assert again["nelbo_bpd"] == many["nelbo_bpd"] and again["iwae_bpd"] == many["iwae_bpd"]


def test_evaluate_refuses_k_zero(tiny_run: Path) -> None:
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    with pytest.raises(ValueError):
        evaluate_model(model, synthetic_images(2), k=0)


# -- the edgevae-train CLI: one real run through train, evaluate and export ----------------------


@pytest.fixture(scope="module")
def cli_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """``edgevae-train train`` on the image folder, 2 small epochs, through CliRunner."""
    run = tmp_path_factory.mktemp("cli-run") / "run"
    result = CliRunner().invoke(train_cli, [
        "train", "--dataset", str(image_folder), "--image-shape", "1,28,28", "--latent-dim", "4",
        "--widths", "8,16", "--components", "2", "--epochs", "2", "--batch-size", "64", "--seed", "3",
        "--threads", "1", "--out", str(run),
    ])
    return run, result


@pytest.mark.slow
def test_train_cli_writes_a_complete_run_folder(cli_run: tuple[Path, object]) -> None:
    run, result = cli_run
    assert result.exit_code == 0, (result.output, result.exception)
    assert "144 train / 16 test images" in result.stdout
    assert "epoch 1:" in result.stdout and "epoch 2:" in result.stdout
    assert "epoch 2/2" in result.stderr  # the progress bar
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "curve.png", "last.pt", "metrics.jsonl",
                                                     "samples.png"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["latent_dim"] == 4 and config["train"]["seed"] == 3
    assert config["data_fingerprint"].startswith("sha256:")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("train_nelbo_bpd", "test_nelbo_bpd", "test_recon_bpd", "test_kl_bpd", "test_psnr_db"):
            assert math.isfinite(row[key]), key
        assert row["test_nelbo_bpd"] == pytest.approx(row["test_recon_bpd"] + row["test_kl_bpd"])
    assert load_checkpoint(run)["epoch"] == 2
    with Image.open(run / "samples.png") as samples:
        assert samples.size == (8 * 30 + 2, 8 * 30 + 2)  # 64 samples in an 8x8 grid
    with Image.open(run / "curve.png") as curve:
        assert curve.size[0] >= 300 and curve.size[1] >= 200


@pytest.mark.slow
def test_train_cli_refuses_an_existing_run(cli_run: tuple[Path, object], image_folder: Path) -> None:
    run, _ = cli_run
    before = (run / "last.pt").read_bytes()
    result = CliRunner().invoke(train_cli, ["train", "--dataset", str(image_folder), "--out", str(run)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"Error: {run} already holds a run; pass --resume to continue it "
                                          "or pick another --out"]
    assert (run / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_evaluate_cli(cli_run: tuple[Path, object]) -> None:
    run, _ = cli_run
    result = CliRunner().invoke(train_cli, ["evaluate", str(run), "--k", "4", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["images"] == 16 and metrics["k"] == 4 and metrics["split"] == "test"
    assert metrics["iwae_bpd"] <= metrics["nelbo_bpd"]
    assert json.loads((run / "evaluation.json").read_text()) == metrics
    table = CliRunner().invoke(train_cli, ["evaluate", str(run), "--k", "2", "--limit", "5"])
    assert table.exit_code == 0
    assert "IWAE bound (k=2)" in table.stdout and "bits/dim" in table.stdout and "PSNR" in table.stdout
    # A partial evaluation is never written where export would pick it up.
    assert json.loads((run / "evaluation.json").read_text()) == metrics


@pytest.mark.slow
def test_threads_option_sets_torch_threads_for_evaluate(cli_run: tuple[Path, object]) -> None:
    run, _ = cli_run
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        result = CliRunner().invoke(train_cli, ["evaluate", str(run), "--k", "2", "--limit", "4", "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "codec-tables"])
def test_every_training_command_refuses_zero_threads(command: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cli, [command, "--threads", "0", str(tmp_path)])
    assert result.exit_code == 2
    assert "Invalid value for '--threads': 0 is not in the range x>=1." in result.stderr


@pytest.mark.slow
def test_training_cli_errors_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgevae.training", "evaluate", str(tmp_path / "no-run")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"Error: {tmp_path / 'no-run' / 'last.pt'}: no checkpoint "
                                        f"(is {tmp_path / 'no-run'} a training run folder?)"]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_export_cli(cli_run: tuple[Path, object], tmp_path: Path) -> None:
    import edgevae.runtime as ev

    run, _ = cli_run
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(train_cli, ["export", str(run), "-o", str(bundle)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "parity encoder: mean" in result.stdout and "parity decoder: pixels" in result.stdout
    files = {p.name for p in bundle.iterdir()}
    assert {"decoder.onnx", "encoder.onnx", "model.json"} <= files
    assert not [name for name in files if name.startswith(".") or name.endswith((".data", ".tmp"))]
    model = ev.load(bundle)
    assert model.latent_dim == 4 and model.sample(2, seed=0).shape == (2, 1, 28, 28)
    manifest = json.loads((bundle / "model.json").read_text())
    evaluation = run / "evaluation.json"
    assert manifest["evaluation"] == (json.loads(evaluation.read_text()) if evaluation.exists() else None)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    again = CliRunner().invoke(train_cli, ["export", str(run), "-o", str(bundle)])
    assert again.exit_code == 2
    assert again.stderr.splitlines() == [f"Error: {bundle} already exists; pass --force to replace it"]
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


@pytest.mark.slow
def test_evaluate_and_export_use_the_split_training_held_out(tiny_run: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder data set's test split depends on the training seed; evaluate and export must
    hold out the same images, not those of seed 0."""
    import shutil

    from edgevae.training import evaluate as evaluate_mod
    from edgevae.training.export import export_run

    run = tmp_path / "seed7"
    shutil.copytree(tiny_run, run)
    checkpoint = torch.load(run / "last.pt", weights_only=False)
    checkpoint["train_config"]["seed"] = 7
    torch.save(checkpoint, run / "last.pt")
    seeds: list[int] = []
    real = data_mod.load_dataset
    monkeypatch.setattr(data_mod, "load_dataset", lambda *a, **k: seeds.append(k.get("seed", 0)) or real(*a, **k))
    evaluate_mod.evaluate_run(run, k=2, limit=4)
    export_run(run, tmp_path / "bundle")
    assert seeds and set(seeds) == {7}, seeds


def test_a_bundles_data_set_comes_from_its_manifest(tiny_bundle: Path, image_folder: Path) -> None:
    """Codec tables, priors, denoisers and novelty thresholds are fitted on the data set and split the
    bundle's training run used, and a manifest that does not say is refused by name."""
    from edgevae.runtime.bundle import read_bundle
    from edgevae.training.data import bundle_dataset, load_dataset

    bundle = read_bundle(tiny_bundle)
    data, expected = bundle_dataset(bundle), load_dataset(str(image_folder), TINY_SHAPE)
    assert data.fingerprint == expected.fingerprint and np.array_equal(data.test, expected.test)
    manifest = json.loads(json.dumps(bundle.manifest))
    del manifest["training"]["train_config"]["dataset"]
    with pytest.raises(InputError, match="does not record the data set"):
        bundle_dataset(type(bundle)(bundle.path, manifest))
