"""Throughput where users look: tokens/s and the matmul share in every metrics line, and a torch
profiler trace with --profile."""

import json

import pytest

from tests.test_cli import cli


def test_metrics_carry_throughput_and_profile_writes_a_trace(tmp_path):
    run = tmp_path / "r"
    r = cli("train", "--preset", "synthetic-2tok-vmd", "--set", "train.steps=12", "--set", "train.log_every=4",
            "--set", "device.device=cpu", "--out", run, "--profile", "3")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # 256 sequences of 2 tokens per step
        assert row["tokens_per_s"] == pytest.approx(row["steps_per_s"] * 256 * 2, rel=0.01)
        assert 0 < row["matmul_share"] < 1
    trace = run / "profile" / "steps3-5-rank0.json"
    assert f"profile of 3 steps: {trace}" in r.stderr.replace("\n", "")
    events = json.loads(trace.read_text())["traceEvents"]
    assert any("aten::" in e.get("name", "") for e in events)  # the ops of the training steps
    table = (run / "profile" / "steps3-5-rank0.txt").read_text()
    assert "Self CPU" in table and "aten::" in table


def test_the_flop_count_is_the_models_six_per_parameter_per_token(tmp_path):
    """Forward and backward of a transformer: about 6 FLOPs per weight per token, over 2L tokens for a
    block model (xt and x0); the attention adds a little. A count off by orders of magnitude (fused
    kernels the counter does not see) fails here."""
    from tests.test_text_train import CORPUS
    from vmd import config as C
    from vmd.train import Trainer

    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    cfg = C.load("shakespeare-bd3-block4", None, [f"task.file={corpus}", "device.device=cpu"])
    trainer = Trainer(cfg, tmp_path / "r")
    weights = sum(p.numel() for n, p in trainer.model.named_parameters() if p.dim() == 2 and "embed" not in n)
    expected = 6 * weights * 2 * cfg.task.length
    assert 0.9 * expected < trainer._flops < 1.5 * expected, (trainer._flops, expected)
