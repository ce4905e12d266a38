import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vmd_cli.main import app

runner = CliRunner()
TINY = ["--set", "model.dim=32", "--set", "model.layers=1", "--set", "model.heads=2", "--set", "latent.dim=4",
        "--set", "latent.encoder_dim=32", "--set", "latent.prior_dim=32", "--set", "train.steps=20",
        "--set", "train.log_every=10", "--set", "device.device=cpu"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vmd"
    r = run("train", "--preset", "synthetic-d1-vmd", *TINY, "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_train_eval_sample_end_to_end(trained):
    r = run("eval", trained, "--nfe", "2", "--samples", "500", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert {"accuracy", "kl", "latent_kl", "active_dims"} <= set(m)
    assert m["nfe"] == 2 and m["samples"] == 500 and 0 <= m["accuracy"] <= 1
    table = run("eval", trained, "--samples", "300")
    assert table.exit_code == 0 and "accuracy" in table.stdout and "latent_kl" in table.stdout
    s = run("sample", trained, "-n", "3", "--json")
    rows = json.loads(s.stdout)
    assert len(rows) == 3 and all(len(r) == 4 and all(0 <= v < 10 for v in r) for r in rows)


def test_resume_extends_a_finished_run(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir)
    r = run("train", "--resume", run_dir)
    assert r.exit_code == 2 and "complete at step 20" in r.output
    r = run("train", "--resume", run_dir, "--set", "train.steps=30")
    assert r.exit_code == 0, r.output
    assert json.loads((run_dir / "meta.json").read_text())["step"] == 30


def one_error_line(r):
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert lines[0].startswith("error:"), r.output
    return r.output


@pytest.mark.parametrize("args, words", [
    (["train", "--preset", "synthetic-2tok-vdm"], ["unknown preset", "synthetic-2tok-vmd"]),
    (["train", "--preset", "synthetic-2tok-vmd", "--set", "train.stpes=3"], ["train.stpes", "steps"]),
    (["train", "--preset", "synthetic-2tok-vmd", "--set", "train.steps=many"], ["train.steps", "int"]),
    (["train", "--preset", "synthetic-2tok-vmd", "--set", "oops"], ["key.path=value"]),
    (["train"], ["--preset"]),
    (["eval", "no/such/run"], ["does not exist"]),
    (["train", "--resume", "no/such/run"], ["does not exist"]),
])
def test_bad_input_gets_one_clear_line_and_exit_2(args, words):
    out = one_error_line(run(*args))
    for w in words:
        assert w in out


def test_bad_run_directories_and_options(trained, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no model.safetensors" in one_error_line(run("eval", tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"garbage" * 10)
    assert "corrupt" in one_error_line(run("eval", bad))
    assert "--nfe values must be integers >= 1" in one_error_line(run("eval", trained, "--nfe", "0"))
    assert "top-margin" in one_error_line(run("eval", trained, "--strategy", "best"))
    partial = tmp_path / "partial"  # inference weights but no training state: nothing to resume from
    partial.mkdir()
    (partial / "model.safetensors").write_bytes((trained / "model.safetensors").read_bytes())
    assert "no train_state.safetensors" in one_error_line(run("train", "--resume", partial))
    (partial / "train_state.safetensors").write_bytes(b"\x10" * 64)
    assert "corrupt" in one_error_line(run("train", "--resume", partial))
    before = (trained / "model.safetensors").read_bytes()
    assert "already holds a run" in one_error_line(run("train", "--preset", "synthetic-d1-vmd", *TINY, "--out", trained))
    assert (trained / "model.safetensors").read_bytes() == before


def test_console_script_help_has_examples():
    for cmd in ([], ["train"], ["eval"], ["sample"]):
        r = subprocess.run([sys.executable, "-m", "vmd_cli.main", *cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "vmd " in r.stdout and "Examples" in r.stdout, r.stdout


def cli(*args, **kwargs):
    """The real ``vmd`` command in a process of its own, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "vmd_cli", *map(str, args)], capture_output=True, text=True, **kwargs)


def assert_one_line(r, code=2):
    assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["solve", "-", "--nfe", "abc"], ["Invalid value for '--nfe'", "vmd solve --help"]),
    (["trian"], ["No such command 'trian'", "train"]),
    (["train", "--bogus"], ["No such option: --bogus"]),
    (["eval"], ["Missing argument"]),
    (["eval", "no-such-model"], ["does not exist", "sudoku-mdm", "sudoku-vmd"]),
])
def test_usage_errors_are_one_line_too(args, words):
    line = assert_one_line(cli(*args, input=""))
    for w in words:
        assert w in line


PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


def test_bundled_models_are_taken_by_name_everywhere(tmp_path):
    r = cli("solve", "-", "--model", "sudoku-mdm", "--format", "json", input=PUZZLE + "\n")
    assert r.returncode == 0 and json.loads(r.stdout)["solved"], r.stderr
    r = cli("sample", "sudoku-vmd", "-n", "2", "--nfe", "5", "--json")
    assert r.returncode == 0 and [len(row) for row in json.loads(r.stdout)] == [81, 81], r.stderr
    (tmp_path / "p.txt").write_text(PUZZLE + "\n")
    r = cli("eval", "sudoku-mdm", "--data", tmp_path / "p.txt", "--nfe", "10", "--strategy", "top-margin", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["accuracy"]["top-margin"]["10"] == 1.0, r.stderr


@pytest.mark.parametrize("out, words", [
    ("/proc/vmd-test/run", ["cannot create run directory /proc/vmd-test/run"]),
    ("FILE", ["is a file, not a run directory"]),
])
def test_an_unwritable_run_directory_fails_before_making_data(tmp_path, out, words):
    """A Sudoku preset makes its puzzle set first (minutes): the output is checked before that."""
    if out == "FILE":
        out = tmp_path / "f"
        out.write_text("x")
    env = {**__import__("os").environ, "VMD_CACHE_DIR": str(tmp_path / "cache")}
    line = assert_one_line(cli("train", "--preset", "sudoku-mdm-tiny", "--set", "task.grids=300", "--out", out, env=env))
    for w in words:
        assert w in line
    assert not (tmp_path / "cache").exists()  # no data made
