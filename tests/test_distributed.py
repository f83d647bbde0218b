"""edgevae.training on several processes: torchrun + DDP (gloo on localhost), streamed folder data.

Real torchrun runs of a tiny model on a small generated folder, one thread per process:
a one-process run and a two-process run end with the same weights; a run whose rank 1 crashes
stops every rank and keeps its last checkpoint; that checkpoint resumes on three processes and
ends where the unbroken one-process run did; rank 0 alone writes the run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import synthetic_images, write_pngs
from edgevae.runtime.errors import InputError
from edgevae.training.cli import main as train_cli
from edgevae.training.data import ImageFiles, load_image_folder, open_image_folder, stream_batches
from edgevae.training.distributed import Context, launched_by_torchrun
from edgevae.training.model import ModelConfig
from edgevae.training.train import TrainConfig, load_checkpoint, train

HERE = Path(__file__).resolve().parent
PROBE = HERE / "torchrun_probe.py"

#: 38 good images + 1 broken file: 4 test, 34 train; batches of 16 leave a last batch of 2, so on
#: three processes one share is empty.
GOOD_IMAGES = 38
TRAIN_OPTIONS = ["--latent-dim", "4", "--widths", "4,8", "--components", "2", "--epochs", "2",
                 "--batch-size", "16", "--seed", "5", "--workers", "1", "--free-bits", "0.01"]
#: 1e-4 relative (the issue's bar); float reduction order alone gives ~1e-8 here.
RELATIVE = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp-images")
    images = synthetic_images(GOOD_IMAGES, seed=11)
    write_pngs(images[:20], root / "a")
    write_pngs(images[20:], root / "b")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    return root


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROBE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env.update(OMP_NUM_THREADS="1", EDGEVAE_DIST_TIMEOUT="60", PYTHONPATH=str(HERE))
    env.update(extra)
    return env


def torchrun(nproc: int, args: list[str], launcher: list[str] | None = None, timeout: float = 150,
             **env: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N`` (or ``launcher``) running the probe entry point."""
    launcher = launcher or ["--standalone"]
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "--nproc-per-node", str(nproc),
               str(PROBE), "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(**env))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run)["model"]


def worst_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).norm() / a[k].double().norm().clamp(min=1e-12)) for k in a)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def probe_writes(stderr: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for line in stderr.splitlines():
        if line.startswith("PROBE rank "):
            rank, _, rest = line[len("PROBE rank "):].partition(" ")
            entries = out.setdefault(int(rank), [])
            if rest.startswith("wrote "):
                entries.append(json.loads(rest[len("wrote "):]))
    return out


@pytest.fixture(scope="module")
def one_process(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain command, no torchrun: the reference run."""
    run = tmp_path_factory.mktemp("one") / "run"
    proc = subprocess.run([sys.executable, "-m", "edgevae.training", "train", "--dataset", str(folder),
                           *TRAIN_OPTIONS, "--threads", "1", "--out", str(run)],
                          capture_output=True, text=True, timeout=150, env=environment())
    assert proc.returncode == 0, proc.stderr
    assert "training on 1 process on cpu" in proc.stdout
    return run


@pytest.fixture(scope="module")
def two_processes(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("two") / "run"
    proc = torchrun(2, ["--dataset", str(folder), *TRAIN_OPTIONS, "--out", str(run)], PROBE_WATCH=str(run.parent))
    assert proc.returncode == 0, proc.stderr
    return run, proc


@pytest.mark.slow
def test_two_processes_train_the_one_process_model(one_process: Path, two_processes: tuple[Path, object]) -> None:
    run, proc = two_processes
    assert "training on 2 processes (gloo) on cpu, 1 torch thread(s) each" in proc.stdout
    assert worst_relative_difference(weights(one_process), weights(run)) < RELATIVE
    for single, double in zip(metrics(one_process), metrics(run), strict=True):
        # Test metrics are reduced over both ranks' shares, not rank 0's alone.
        assert double["test_nelbo_bpd"] == pytest.approx(single["test_nelbo_bpd"], abs=1e-4)
        assert double["test_psnr_db"] == pytest.approx(single["test_psnr_db"], abs=1e-3)
        assert double["train_nelbo_bpd"] == pytest.approx(single["train_nelbo_bpd"], abs=1e-4)
    # Same random stream at any world size: the generator state saved for resuming agrees exactly.
    assert torch.equal(load_checkpoint(one_process)["torch_rng"], load_checkpoint(run)["torch_rng"])


@pytest.mark.slow
def test_a_checkpoint_does_not_depend_on_the_world_size(one_process: Path, two_processes: tuple[Path, object]) -> None:
    """What export reads: the same keys, shapes, dtypes, CPU tensors and recorded command."""
    from edgevae.training.train import train_command

    single, double = load_checkpoint(one_process), load_checkpoint(two_processes[0])
    assert single.keys() == double.keys()
    for name, tensor in single["model"].items():
        other = double["model"][name]
        assert (other.shape, other.dtype, other.device.type) == (tensor.shape, tensor.dtype, "cpu"), name
    assert train_command(single) == train_command(double)
    assert single["data_fingerprint"] == double["data_fingerprint"]


@pytest.mark.slow
def test_rank_0_alone_writes_and_prints(two_processes: tuple[Path, subprocess.CompletedProcess]) -> None:
    run, proc = two_processes
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "curve.png", "last.pt", "metrics.jsonl",
                                                     "samples.png"]
    writes = probe_writes(proc.stderr)
    assert set(writes) == {0, 1}
    assert writes[1] == []
    assert any("config.json" in w for w in writes[0]) and any("last.pt" in w for w in writes[0])  # the probe works
    assert proc.stdout.count("epoch 2: train") == 1  # one log
    assert proc.stderr.count("checking 39 images") == 1  # one progress bar
    # The broken file is reported by name, once (rank 0 reports what every rank found), and left out.
    assert proc.stdout.count("broken.png: not a readable image") == 1
    assert f"{GOOD_IMAGES - 4} train / 4 test images" in proc.stdout


@pytest.fixture(scope="module")
def crashed(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, float]:
    """A two-process run whose rank 1 raises in epoch 2 (after the 3 steps of epoch 1 and one more)."""
    run = tmp_path_factory.mktemp("crash") / "run"
    started = time.monotonic()
    proc = torchrun(2, ["--dataset", str(folder), *TRAIN_OPTIONS, "--out", str(run)],
                    PROBE_FAIL_RANK="1", PROBE_FAIL_AFTER="4")
    return run, proc, time.monotonic() - started


@pytest.mark.slow
def test_a_failing_rank_stops_every_rank(crashed: tuple[Path, subprocess.CompletedProcess, float]) -> None:
    run, proc, seconds = crashed
    assert proc.returncode != 0
    assert "Error: rank 1 of 2: failed with RuntimeError: injected failure; stopping all ranks" in proc.stderr
    # Rank 0 says why it stops too: torchrun's SIGTERM, or its peer's closed connection, whichever is first.
    assert "rank 0 of 2: stopped by torchrun" in proc.stderr or "Error: rank 0 of 2: failed" in proc.stderr
    # No rank prints a traceback (torchrun's own summary of the failure follows, with its own).
    assert "edgevae/training" not in proc.stderr and "training/train.py" not in proc.stderr
    assert seconds < 60  # promptly: not after the collective timeout
    checkpoint = load_checkpoint(run)
    assert checkpoint["epoch"] == 1  # the last complete epoch, intact
    assert not list(run.glob("*.tmp"))


@pytest.mark.slow
def test_a_hanging_rank_times_out(folder: Path, tmp_path: Path) -> None:
    """A peer alive but silent (not a closed connection) fails the run after $EDGEVAE_DIST_TIMEOUT."""
    run = tmp_path / "run"
    started = time.monotonic()
    proc = torchrun(2, ["--dataset", str(folder), *TRAIN_OPTIONS, "--workers", "0", "--out", str(run)],
                    PROBE_FAIL_RANK="1", PROBE_FAIL_AFTER="4", PROBE_HANG="1", EDGEVAE_DIST_TIMEOUT="5")
    seconds = time.monotonic() - started
    assert proc.returncode != 0
    assert "Error: rank 0 of 2: failed with" in proc.stderr and "stopping all ranks" in proc.stderr
    assert "rank 1 of 2: stopped by torchrun" in proc.stderr  # the sleeper is woken and stopped
    assert seconds < 60
    assert load_checkpoint(run)["epoch"] == 1


@pytest.mark.slow
def test_resume_on_three_processes_after_the_crash(crashed: tuple[Path, subprocess.CompletedProcess, float],
                                                   one_process: Path, folder: Path, tmp_path: Path) -> None:
    """The multi-node form of torchrun (c10d rendezvous on a 127.0.0.1 endpoint), another world size."""
    run = tmp_path / "run"
    shutil.copytree(crashed[0], run)
    launcher = ["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    proc = torchrun(3, ["--dataset", str(folder), "--workers", "0", "--out", str(run), "--resume"], launcher)
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout and "training on 3 processes" in proc.stdout
    assert load_checkpoint(run)["epoch"] == 2
    assert worst_relative_difference(weights(one_process), weights(run)) < RELATIVE
    assert metrics(run)[-1]["test_nelbo_bpd"] == pytest.approx(metrics(one_process)[-1]["test_nelbo_bpd"], abs=1e-4)


# -- in one process -----------------------------------------------------------------------------


@pytest.mark.slow
def test_plain_train_sets_up_nothing_distributed(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun()
    result = CliRunner().invoke(train_cli, ["train", "--dataset", str(folder), "--latent-dim", "2", "--widths", "4,8",
                                            "--components", "1", "--epochs", "1", "--workers", "0", "--threads", "1",
                                            "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "training on 1 process on cpu" in result.stdout
    assert not torch.distributed.is_initialized()


def test_device_cuda_without_a_gpu_is_a_one_line_error(folder: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(train_cli, ["train", "--dataset", str(folder), "--device", "cuda",
                                            "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr == "Error: --device cuda: PyTorch sees no CUDA GPU (is this a CPU-only torch build?)\n"
    assert not (tmp_path / "run").exists()


def test_the_global_batch_must_cover_every_rank(tmp_path: Path) -> None:
    images = synthetic_images(10)
    from edgevae.training.data import Dataset

    data = Dataset("synthetic", images[:8], images[8:], "sha256:" + "0" * 64)
    config = ModelConfig(latent_dim=2, channels=(4, 8), res_blocks=0, mixture_components=1)
    with pytest.raises(InputError, match="global batch, shared by 4 processes"):
        train(data, config, TrainConfig(batch_size=3), tmp_path / "run", context=Context(rank=0, world_size=4),
              log=lambda _: None)


@pytest.mark.parametrize("count", [0, 1, 2, 5, 16, 17])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shares_partition_a_batch_in_rank_order(count: int, world: int) -> None:
    shares = [Context(rank=r, world_size=world).share(count) for r in range(world)]
    assert shares[0][0] == 0 and shares[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    sizes = [stop - start for start, stop in shares]
    assert max(sizes) - min(sizes) <= 1


# -- the streaming loader -----------------------------------------------------------------------


@pytest.mark.slow
def test_streamed_folder_matches_the_in_memory_one_and_skips_bad_files(folder: Path) -> None:
    messages: list[str] = []
    streamed = open_image_folder(folder, (1, 28, 28), seed=3, workers=1, log=messages.append)
    assert messages == [f"skipping {folder / 'b' / 'broken.png'}: not a readable image (UnidentifiedImageError)"]
    assert streamed.skipped == (messages[0][len("skipping "):],)
    with pytest.warns(UserWarning, match="broken.png: not a readable image"):
        in_memory = load_image_folder(folder, (1, 28, 28), seed=3)
    assert streamed.fingerprint == in_memory.fingerprint
    assert len(streamed.train) == len(in_memory.train) and len(streamed.test) == len(in_memory.test)
    batches = [[(i, i) for i in range(len(streamed.test))]]
    [(keys, pixels, bad)] = list(stream_batches(streamed.test, batches, workers=0))
    np.testing.assert_array_equal(pixels.numpy(), in_memory.test)  # same held-out images, same order
    assert bad == [] and keys == list(range(len(streamed.test)))


@pytest.mark.slow
def test_a_file_that_breaks_mid_run_is_reported_not_fatal(tmp_path: Path) -> None:
    paths = write_pngs(synthetic_images(6, seed=2), tmp_path / "imgs")
    files = ImageFiles(paths, (1, 28, 28))
    paths[3].write_bytes(b"truncated")
    out = list(stream_batches(files, [[("a", 0), ("b", 3), ("c", 4)], [("d", 5)]], workers=1))
    (keys, pixels, bad), (keys2, pixels2, bad2) = out
    assert keys == ["a", "c"] and pixels.shape == (2, 1, 28, 28) and pixels.dtype == torch.uint8
    assert bad == [("b", f"{paths[3]}: not a readable image (UnidentifiedImageError)")]
    assert keys2 == ["d"] and bad2 == []


@pytest.mark.slow
def test_streamed_training_is_the_in_memory_training_bit_for_bit(folder: Path, tmp_path: Path) -> None:
    """One process: streaming a folder changes nothing in the run (same batches, same noise),
    so folder runs made before streaming existed stay reproducible by their commands."""
    shape = (1, 28, 28)
    model = ModelConfig(latent_dim=2, channels=(4, 8), res_blocks=0, mixture_components=1)
    config = TrainConfig(dataset=str(folder), epochs=2, batch_size=16, warmup_steps=2, seed=3)
    with pytest.warns(UserWarning, match="broken.png"):
        in_memory = load_image_folder(folder, shape, seed=3)
    streamed = open_image_folder(folder, shape, seed=3, workers=1, log=lambda _: None)
    train(in_memory, model, config, tmp_path / "memory", log=lambda _: None)
    train(streamed, model, config, tmp_path / "streamed", log=lambda _: None, workers=1)
    a, b = load_checkpoint(tmp_path / "memory"), load_checkpoint(tmp_path / "streamed")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert metrics(tmp_path / "memory")[-1]["test_nelbo_bpd"] == metrics(tmp_path / "streamed")[-1]["test_nelbo_bpd"]


@dataclass(frozen=True)
class SimulatedRank(Context):
    """A rank of a simulated world in this process: its all-reduce returns the known global sum."""

    total: torch.Tensor | None = None

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.total


@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_loss_gradients_average_to_the_global_batch_gradient(world: int) -> None:
    """DDP averages the ranks' gradients; each rank's loss is scaled so that this average is the
    gradient of the whole batch's loss, with uneven shares (13 images) and free bits that clamp
    some latent dimensions and not others (the clamp's mask comes from the global batch mean)."""
    from edgevae.training.model import VAE
    from edgevae.training.train import batch_loss

    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dim=6, channels=(4, 8), res_blocks=0, mixture_components=2))
    images = torch.from_numpy(synthetic_images(13, seed=4))
    eps = torch.randn(13, 6)
    with torch.no_grad():
        kl = model.loss_terms(images, eps).kl_per_dim
    config = TrainConfig(free_bits=float(kl.mean(0).median()), distortion_sigma=10.0)
    active = int((kl.mean(0) >= config.free_bits).sum())
    assert 0 < active < 6  # a mixed mask

    def gradient(loss: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    whole = gradient(batch_loss(model.loss_terms(images, eps), 13, 0.5, config, Context()))
    ranks = []
    for rank in range(world):
        share = SimulatedRank(rank=rank, world_size=world, total=kl.sum(0))
        start, stop = share.share(13)
        ranks.append(gradient(batch_loss(model.loss_terms(images[start:stop], eps[start:stop]), 13, 0.5, config, share)))
    averaged = torch.stack(ranks).mean(0)  # what DDP does
    assert float((averaged - whole).norm() / whole.norm()) < 1e-5
