"""The fine-tuning loop both bundle-derived runs share (training/finetune.py: `edgevae-train integer`
and `edgevae-train context`): an interrupted run resumes to the weights of an uninterrupted one,
and --stop-after ends inside the schedule, which a resume then finishes the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _integer(source: Path):
    from edgevae.training.integer_run import IntegerConfig, train_integer

    return train_integer, IntegerConfig(source=str(source), epochs=2, batch_size=32, calibration_images=64)


def _context(source: Path):
    from edgevae.training.context import ContextConfig, train_context

    return train_context, ContextConfig(source=str(source), hidden=4, layers=1, epochs=2, batch_size=32)


@pytest.mark.slow
@pytest.mark.parametrize("trainer", [_integer, _context], ids=["integer", "context"])
def test_an_interrupted_run_resumes_to_the_same_weights(trainer, float_bundle: Path, tmp_path: Path) -> None:
    from edgevae.training.train import CHECKPOINT

    train, config = trainer(float_bundle)
    whole = train(config, tmp_path / "whole", log=lambda _: None)

    class Stop(Exception):
        pass

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1:"):
            raise Stop

    with pytest.raises(Stop):
        train(config, tmp_path / "cut", log=stop_after_epoch_1)
    resumed = train(config, tmp_path / "cut", resume=True, log=lambda _: None)
    assert resumed["epoch"] == whole["epoch"] == 2 and resumed["nelbo_bpd"] == whole["nelbo_bpd"]
    a, b = (torch.load(tmp_path / run / CHECKPOINT, weights_only=False)["model"] for run in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_stop_after_ends_inside_the_schedule(float_bundle: Path, tmp_path: Path) -> None:
    train, config = _context(float_bundle)
    whole = train(config, tmp_path / "whole", log=lambda _: None)
    first = train(config, tmp_path / "two-part", log=lambda _: None, stop_after=1)
    assert first["epoch"] == 1 and first["lr"] > whole["lr"]  # the learning rate followed the 2-epoch schedule
    assert train(config, tmp_path / "two-part", resume=True, log=lambda _: None)["nelbo_bpd"] == whole["nelbo_bpd"]


def test_a_run_folder_is_never_reused_and_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    from edgevae.runtime.errors import InputError, OutputError
    from edgevae.training import finetune
    from edgevae.training.train import CHECKPOINT

    with pytest.raises(InputError, match="nothing to resume"):
        finetune.open_run(tmp_path / "new", resume=True)
    assert finetune.open_run(tmp_path / "new", resume=False) is None and (tmp_path / "new").is_dir()
    (tmp_path / "new" / CHECKPOINT).write_bytes(b"")
    with pytest.raises(OutputError, match="already holds a run"):
        finetune.open_run(tmp_path / "new", resume=False)
