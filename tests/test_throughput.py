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
