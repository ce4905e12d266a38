"""Runs that lose nothing, in process: a signal in the middle of a step, the metrics history, the
writer lock, file-system faults and the messages of a diverged run."""

import dataclasses
import os
import signal

import pytest
import torch

from tests.conftest import tiny
from vmd import checkpoint
from vmd.runtime import history
from vmd.runtime.errors import CheckpointError, TrainingDiverged
from vmd.train import Trainer, TrainingInterrupted, train


def state(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "train_state.safetensors"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_middle_of_a_step_finishes_the_step_and_resumes_bitwise(tmp_path, monkeypatch, sig):
    cfg = tiny("vmd", steps=30, train={"log_every": 4, "checkpoint_every": 10})
    train(cfg, tmp_path / "straight")

    forward = type(Trainer.create(cfg, tmp_path / "probe").model).forward
    calls = []

    def signalled(model, *args, **kwargs):  # the signal lands inside the 17th step's forward pass
        calls.append(1)
        if len(calls) == 17:
            os.kill(os.getpid(), sig)
        return forward(model, *args, **kwargs)

    trainer = Trainer.create(cfg, tmp_path / "split")
    monkeypatch.setattr(type(trainer.model), "forward", signalled)
    with pytest.raises(TrainingInterrupted) as e:
        trainer.run()
    assert e.value.step == 17 and e.value.signum == sig and e.value.exit_code == 128 + sig
    monkeypatch.setattr(type(trainer.model), "forward", forward)
    Trainer.resume(tmp_path / "split").run()
    a, b = state(tmp_path / "straight"), state(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = history.read(tmp_path / "straight"), history.read(tmp_path / "split")
    assert [r["step"] for r in rb] == [r["step"] for r in ra] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert [r["loss"] for r in rb] == [r["loss"] for r in ra]  # the window cut at step 17 was saved with the run


def test_metrics_history_has_every_window_with_its_terms(tmp_path):
    cfg = tiny("vmd", steps=25, train={"log_every": 10}, latent={"kl_warmup_steps": 20})
    train(cfg, tmp_path / "r")
    rows = history.read(tmp_path / "r")
    assert [(r["step"], r["steps"]) for r in rows] == [(10, 10), (20, 10), (25, 5)]
    for r in rows:
        assert {"loss", "recon", "latent_kl", "nelbo", "bits_per_token", "lr", "beta", "steps_per_s", "elapsed_s"} <= set(r)
    assert [r["beta"] for r in rows] == [0.5, 1.0, 1.0]


def test_resume_drops_history_past_its_checkpoint_and_a_torn_line(tmp_path):
    cfg = tiny(steps=20, train={"log_every": 5, "checkpoint_every": 10})
    train(cfg, tmp_path / "r")
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:  # as if killed after logging 25, torn at 30
        f.write('{"step": 25, "loss": 1.0}\n{"step": 30, "lo')
    Trainer.resume(tmp_path / "r", lambda c: dataclasses.replace(c, train=dataclasses.replace(c.train, steps=30))).run()
    assert [r["step"] for r in history.read(tmp_path / "r")] == [5, 10, 15, 20, 25, 30]
    assert history.read(tmp_path / "r")[4]["loss"] != 1.0


def test_a_second_writer_is_refused_until_the_first_is_done(tmp_path):
    cfg = tiny(steps=10)
    first = Trainer.create(cfg, tmp_path / "r")
    with pytest.raises(CheckpointError, match=f"being written by another vmd train \\(pid {os.getpid()}\\)"):
        Trainer.create(cfg, tmp_path / "r")
    first.run()
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer.create(cfg, tmp_path / "r")
    Trainer.resume(tmp_path / "r", lambda c: dataclasses.replace(c, train=dataclasses.replace(c.train, steps=12))).run()
    assert checkpoint.load_model(tmp_path / "r")[2] == 12


@pytest.mark.parametrize("where, message", [
    (lambda tmp: "/proc/vmd-test/run", "cannot create run directory /proc/vmd-test/run"),
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "is a file, not a run directory"),
])
def test_a_run_directory_that_cannot_be_written_fails_before_any_work(tmp_path, where, message):
    with pytest.raises(CheckpointError, match=message):
        Trainer.create(tiny(steps=5), where(tmp_path))


def test_divergence_before_any_checkpoint_says_there_is_none_and_advice_fits_the_precision(tmp_path):
    cfg = tiny(steps=30, train={"lr": 1e30, "grad_clip": 0.0, "checkpoint_every": 100, "log_every": 5})
    with pytest.raises(TrainingDiverged) as e:
        train(cfg, tmp_path / "r")
    assert "no checkpoint had been written yet" in str(e.value) and "fp32" not in str(e.value)
    bf16 = dataclasses.replace(cfg, device=dataclasses.replace(cfg.device, precision="bf16"))
    with pytest.raises(TrainingDiverged, match="train in fp32"):
        train(bf16, tmp_path / "r2")
