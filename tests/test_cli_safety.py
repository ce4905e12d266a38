"""A run never writes over files that are not its own, and a config can blow up neither memory nor
the terminal: through the CLI, as an unkind user would try it."""

import json
import subprocess
import sys
import time

import pytest

TINY = ["--preset", "synthetic-2tok-mdm", "--set", "train.steps=2", "--set", "model.dim=16", "--set", "model.layers=1",
        "--set", "device.device=cpu"]


def vmd(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "vmd_cli", *map(str, args)], capture_output=True, text=True, **kwargs)


def test_a_folder_of_someone_else_s_files_is_refused_and_left_as_it_was(tmp_path):
    mine = {"config.yaml": "my: config\n", "meta.json": '{"mine": true}\n', "metrics.jsonl": '{"step": 1}\n'}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    r = vmd("train", *TINY, "--out", tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "is not empty" in lines[0] and "config.yaml" in lines[0]
    assert "another --out" in lines[0] and "a folder inside this one" in lines[0]
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == mine  # byte for byte, no lock file left


def test_out_dot_in_a_project_folder_is_refused_and_an_empty_folder_is_taken(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = vmd("train", *TINY, "--out", ".", cwd=tmp_path)
    assert r.returncode == 2 and "is not empty (it holds 'notes.txt')" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = vmd("train", *TINY, "--out", empty)
    assert r.returncode == 0, r.stderr
    assert json.loads((empty / "meta.json").read_text())["step"] == 2
    again = vmd("train", *TINY, "--out", empty)  # now a run: the resume hint, as before
    assert again.returncode == 2 and "already holds a run; continue it with --resume" in again.stderr


def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_config_is_one_short_line_in_little_time_and_memory(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs() + "train: {steps: *a8}\n")
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.stderr.write(r.stderr)")  # the peak of this child alone, in KiB
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "vmd_cli", "train", "--config", bomb,
                        "--out", tmp_path / "run"], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - t0
    code, peak_kib = map(int, r.stdout.split())
    lines = r.stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and len(lines[0]) <= 300 and "aliases expand" in lines[0], r.stderr
    assert seconds < 10 and peak_kib < 500 * 1024
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["config", "set"])
def test_a_bad_value_is_echoed_as_a_bounded_prefix(tmp_path, where):
    if where == "config":  # 9^4 values: under the alias bound, so the type check sees (and echoes) the value
        path = tmp_path / "wide.yaml"
        path.write_text(_laughs(4) + "model: {dim: *a3}\n")
        args = ["--config", path]
    else:
        args = ["--set", "task.vocab=" + "9" * 5000]
    r = vmd("train", "--preset", "synthetic-2tok-mdm", *args, "--out", tmp_path / "run")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and len(lines[0]) <= 300, r.stderr
