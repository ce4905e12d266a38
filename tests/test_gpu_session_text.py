"""bench/gpu_session.py, the prepared GPU sessions: `text` end to end on the CPU at a tiny size (both
presets train, score a finite BPC and time the KV cache, and the summary says so; the device
machine runs the same code at the presets' size, docs/gpu-session.md), the probe that halves the
batch on running out of GPU memory, and `sudoku` refusing bad input before it trains anything."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 60
SMALL = ["model.dim=32", "model.layers=1", "model.heads=2", "latent.encoder_dim=32", "task.length=32",
         "train.batch_size=4"]


def session(tmp_path, *extra):
    env = {**os.environ, "VMD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}  # no text8 there
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_session.py"), "text", "--device", "cpu",
                           "--minutes", "0.02", "--probe-steps", "1", "--eval-sequences", "4", "--draws", "1",
                           "--gen-batch", "2", "--rounds", "1", "--runs", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "out"), *extra],
                          capture_output=True, text=True, env=env, timeout=240)


def test_the_text_session_trains_scores_and_times_both_presets_on_a_local_text(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(CORPUS)
    r = session(tmp_path, "--text-file", str(text), *[f"--set={o}" for o in SMALL])
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "gpu-text.json").read_text())
    assert s["errors"] == {} and "text8 absent" in s["corpus"] and s["gpu"] is None
    assert set(s["runs"]) == {"text8-bd3-block4", "text8-block4"}
    for preset, run in s["runs"].items():
        assert run["precision"] == "bf16" and run["steps"] >= 10 and run["tokens_per_s"] > 0, preset
        assert math.isfinite(run["score"]["bpc"]) and 0 < run["score"]["bpc"] < 20, preset
        assert [c["steps_per_block"] for c in run["cache"]] == [1, 4]
        assert all(c["speedup"] > 0 and c["cached_tokens_per_s"] > 0 for c in run["cache"])
    assert "z_gain" in s["runs"]["text8-block4"]["score"]
    page = (tmp_path / "out" / "gpu-text.md").read_text()
    assert "BD3 block 4" in page and "block VMD block 4" in page and "speed-up" in page


def test_without_text8_or_a_text_file_the_session_says_so_in_one_line(tmp_path):
    r = session(tmp_path)
    assert r.returncode == 2 and "no --text-file was given" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_probe_out_of_gpu_memory_halves_the_batch(monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import _gpu_common as common
    from vmd import config as C

    seen = []

    def probe(cfg, steps):
        seen.append(cfg.train.batch_size)
        if cfg.train.batch_size > 128:
            raise common.torch.OutOfMemoryError("CUDA out of memory")
        return 2.0, common.torch.device("cpu")

    monkeypatch.setattr(common, "probe_rate", probe)
    cfg, rate, _ = common.probe_fitting(C.load("text8-bd3-block4"), 3)
    assert seen == [512, 256, 128] and cfg.train.batch_size == 128 and rate == 2.0


@pytest.mark.parametrize("bad, said", [(["--presets", "sudoku-mdm"], "--presets takes an MDM and a VMD preset"),
                                       (["--eval", "10,5"], "--eval takes three counts")])
def test_the_sudoku_session_refuses_bad_input_in_one_line_before_training(tmp_path, bad, said):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_session.py"), "sudoku",
                        "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), *bad],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "VMD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("gpu_session.py sudoku: error:")
    assert not any((tmp_path / d).exists() for d in ("out", "runs", "cache"))
