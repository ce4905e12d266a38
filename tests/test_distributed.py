"""Data parallel training with torchrun and gloo on the CPU: two processes of half the batch each
train the same steps as one process that takes the whole batch in two passes; a run moves between
one process and two through --resume; SIGTERM to the launcher leaves a checkpoint of one step that
every rank contributed to and exits 143; bad input is one line and exit 2; a rank killed by
SIGKILL ends the job in seconds, exit 137. The launcher is ``python -m vmd_cli.torchrun``
(torchrun's own launcher, ending as schedulers expect)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.test_cli import assert_one_line
from tests.test_text_train import CORPUS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LAUNCH = [sys.executable, "-m", "vmd_cli.torchrun", "--standalone"]


def tiny_text(tmp_path, steps: int) -> list[str]:
    """A block VMD (blocks of 4, one z per block, the costliest loss) on a small corpus, with validation."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    sets = [f"task.file={corpus}", "task.length=16", "model.dim=32", "model.layers=1", "model.heads=2",
            "latent.encoder_dim=32", "train.batch_size=8", f"train.steps={steps}", "train.log_every=2",
            "train.eval_every=4", "train.eval_sequences=12", "train.checkpoint_every=4", "train.warmup_steps=2",
            "device.device=cpu"]
    return ["--preset", "shakespeare-block4", *[a for s in sets for a in ("--set", s)]]


def vmd(*args, procs: int = 1, **kwargs):
    """``vmd ARGS`` as one process, or under torchrun as ``procs`` (gloo on the CPU)."""
    launch = [sys.executable, "-m", "vmd_cli"] if procs == 1 else LAUNCH + [f"--nproc_per_node={procs}"]
    return subprocess.run([*launch, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=240, **kwargs)


def state(run):
    return load_file(str(run / "train_state.safetensors"))


def history(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(a, b, atol=1e-4):
    """Two runs logged the same losses and validation and hold the same weights (float sums aside)."""
    ha, hb = history(a), history(b)
    assert [r["step"] for r in ha] == [r["step"] for r in hb]
    for ra, rb in zip(ha, hb):
        for k in ("loss", "nelbo", "latent_kl", "valid_bpt"):
            if k in ra:
                assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-5), (ra["step"], k)
    sa, sb = state(a), state(b)
    weights = [k for k in sa if k.startswith("model.")]
    assert weights and all(torch.allclose(sa[k], sb[k], atol=atol) for k in weights)
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("rng."))  # the same streams, saved whole


def test_two_processes_of_half_the_batch_train_like_one_that_takes_it_in_two_passes(tmp_path):
    ddp, one, whole = tmp_path / "ddp", tmp_path / "one", tmp_path / "whole"
    r = vmd("train", *tiny_text(tmp_path, 8), "--out", ddp, procs=2)
    assert r.returncode == 0, r.stderr
    assert "x 2 processes" in r.stderr and r.stderr.count("saved ") == 1  # rank 0 alone reports
    assert json.loads((ddp / "meta.json").read_text())["processes"] == 2
    assert {k for k in state(ddp) if k.startswith("rng.")} == {"rng.data", "rng.noise", "rng.data.1", "rng.noise.1"}
    r = vmd("train", *tiny_text(tmp_path, 8), "--set", "train.accumulate=2", "--out", one)
    assert r.returncode == 0, r.stderr
    assert_same_training(ddp, one)
    assert all(row["tokens_per_s"] > 0 and 0 < row["matmul_share"] < 1 for row in history(ddp))
    # the same global batch in one pass is another draw of the same step: close, not equal
    assert vmd("train", *tiny_text(tmp_path, 8), "--out", whole).returncode == 0
    last_one, last_whole = history(one)[-1], history(whole)[-1]
    assert last_whole["loss"] != last_one["loss"]
    assert last_whole["loss"] == pytest.approx(last_one["loss"], rel=0.15)
    r = vmd("eval", ddp, "--max-sequences", "4", "--json")  # a run trained under torchrun is a run like any other
    assert r.returncode == 0 and json.loads(r.stdout)["bpc"] > 0, r.stderr


def test_a_run_moves_between_one_process_and_two_through_resume(tmp_path):
    """Two shards throughout: 4 steps under torchrun, 4 more in one process, 4 more under torchrun,
    equal to 12 steps in one process (at a constant learning rate: train.steps changes on the way)."""
    ref, moved = tmp_path / "ref", tmp_path / "moved"
    flat = ["--set", "train.min_lr_ratio=1.0"]
    assert vmd("train", *tiny_text(tmp_path, 12), *flat, "--set", "train.accumulate=2", "--out", ref).returncode == 0
    r = vmd("train", *tiny_text(tmp_path, 4), *flat, "--out", moved, procs=2)
    assert r.returncode == 0, r.stderr
    r = vmd("train", "--resume", moved, "--set", "train.steps=8", "--set", "train.accumulate=2")
    assert r.returncode == 0, r.stderr
    r = vmd("train", "--resume", moved, "--set", "train.steps=12", "--set", "train.accumulate=1", procs=2)
    assert r.returncode == 0, r.stderr
    assert_same_training(ref, moved)


def long_run_under_way(tmp_path, run, deadline_s: float = 120) -> subprocess.Popen:
    """Two ranks training a run of 100,000 steps (no checkpoint before a signal), past their first logs."""
    args = [*tiny_text(tmp_path, 100000), "--set", "train.checkpoint_every=100000", "--set", "train.eval_every=0",
            "--out", run]
    proc = subprocess.Popen(LAUNCH + ["--nproc_per_node=2", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + deadline_s
    while not ((run / "metrics.jsonl").exists() and len(history(run)) >= 2) and time.time() < deadline:
        time.sleep(0.2)
    return proc


def test_sigterm_to_the_launcher_leaves_a_checkpoint_every_rank_agrees_on(tmp_path):
    run = tmp_path / "run"
    proc = long_run_under_way(tmp_path, run)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err  # what a scheduler requeues on
    assert "SIGTERM at step" in err and "continue with: vmd train --resume" in err, err
    meta = json.loads((run / "meta.json").read_text())
    st = state(run)
    step = meta["step"]
    assert step > 4 and f"SIGTERM at step {step};" in err
    assert {"rng.data", "rng.data.1", "rng.noise", "rng.noise.1"} <= set(st)
    r = vmd("train", "--resume", run, "--set", f"train.steps={step + 2}", procs=2)
    assert r.returncode == 0, r.stderr
    assert history(run)[-1]["step"] == step + 2


def test_a_rank_killed_by_sigkill_ends_the_job_in_seconds(tmp_path):
    run = tmp_path / "run"
    proc = long_run_under_way(tmp_path, run)
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(ranks) == 2, ranks
    t0 = time.time()
    os.kill(int(max(ranks, key=int)), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert time.time() - t0 < 30 and proc.returncode == 137, err
    assert "was killed by SIGKILL" in err and "Traceback" not in err, err


def test_bad_distributed_input_is_one_line(tmp_path):
    r = vmd("train", *tiny_text(tmp_path, 4), "--set", "train.batch_size=9", "--out", tmp_path / "odd", procs=2)
    assert r.returncode == 2 and r.stderr.count("must divide into 2 process(es)") == 1, r.stderr
    assert "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr, r.stderr
    for args in (["sample"], ["-m", "train"]):  # sample would run once per rank; -m is the launcher's to set
        r = vmd(*args, procs=2)
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "odd").exists()
    alone = {**ENV, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29581"}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "vmd_cli", "train", *tiny_text(tmp_path, 4), "--set", "device.timeout=2",
                        "--out", tmp_path / "alone"], capture_output=True, text=True, env=alone, timeout=120)
    line = assert_one_line(r)
    assert "rank 1: could not meet the other 1 process(es) at 127.0.0.1:29581 within 2 s" in line
    assert time.time() - t0 < 60 and not (tmp_path / "alone").exists()
    run = tmp_path / "run"
    assert vmd("train", *tiny_text(tmp_path, 4), "--out", run).returncode == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    line = assert_one_line(vmd("train", "--resume", run, "--set", "model.dim=64"))
    assert "model.dim is 32" in line and "keeps its model" in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_frozen_denoiser_trains_its_latent_path_under_torchrun(tmp_path):
    """DDP waits only for the gradients of what trains: freezing comes before the wrapper."""
    from tests.conftest import tiny
    from vmd.train import train

    train(tiny("mdm", steps=4, model={"dim": 32, "layers": 1, "heads": 2}), tmp_path / "mdm")
    sets = ["device.device=cpu", "train.steps=4", "train.log_every=2", f"train.init_from={tmp_path / 'mdm'}",
            "train.freeze_denoiser=true", "model.dim=32", "model.layers=1", "model.heads=2", "latent.encoder_dim=32",
            "latent.prior_dim=32"]
    run = tmp_path / "vmd"
    r = vmd("train", "--preset", "synthetic-2tok-vmd", *[a for s in sets for a in ("--set", s)], "--out", run, procs=2)
    assert r.returncode == 0, r.stderr
    start = load_file(str(tmp_path / "mdm" / "model.safetensors"))  # the weights init_from starts from
    after = state(run)
    denoiser = [k for k in start if f"model.{k}" in after]
    assert denoiser and all(torch.equal(start[k], after[f"model.{k}"]) for k in denoiser)
