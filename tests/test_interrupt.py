"""Real training processes stopped by SIGINT, SIGTERM and SIGKILL, resumed, and compared bitwise
with an uninterrupted run; two writers on one run directory."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from vmd.runtime import history

STEPS = 300
ARGS = ["--preset", "synthetic-d1-vmd", "--set", f"train.steps={STEPS}", "--set", "train.checkpoint_every=100",
        "--set", "train.log_every=25", "--set", "model.dim=32", "--set", "model.layers=1", "--set", "model.heads=2",
        "--set", "device.device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: CPU training is then bitwise reproducible


def vmd(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "vmd_cli", *map(str, args)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_step(run_dir, step, proc, timeout=60):
    """Until the run's history reaches ``step`` (the process is then surely inside its loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = history.read(run_dir)
        if rows and rows[-1]["step"] >= step:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{run_dir} did not reach step {step}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    rc, _, err = finish(vmd("train", *ARGS, "--out", out))
    assert rc == 0, err
    return out


TIMINGS = ("steps_per_s", "tokens_per_s", "matmul_share", "elapsed_s")  # of the machine, not the run


def assert_same_run(a, b):
    sa, sb = load_file(str(a / "train_state.safetensors")), load_file(str(b / "train_state.safetensors"))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k  # bitwise
    ra, rb = history.read(a), history.read(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(25, STEPS + 1, 25))
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k not in TIMINGS} == {k: v for k, v in y.items() if k not in TIMINGS}


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_whole_step_and_the_resume_is_bitwise_equal(reference, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = vmd("train", *ARGS, "--out", out)
    wait_for_step(out, 110, proc)
    proc.send_signal(sig)
    rc, _, err = finish(proc)
    assert rc == code, err
    assert f"continue with: vmd train --resume {out}" in err and "Traceback" not in err
    stopped = json.loads((out / "meta.json").read_text())["step"]
    assert 110 <= stopped < STEPS
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    rc, _, err = finish(vmd("train", "--resume", out))
    assert rc == 0, err
    assert_same_run(reference, out)


def test_kill_9_then_resume_is_bitwise_equal_and_the_history_has_no_repeated_step(reference, tmp_path):
    out = tmp_path / "run"
    proc = vmd("train", *ARGS, "--out", out)
    wait_for_step(out, 175, proc)  # logged past the checkpoint of step 100: those lines are repeated
    proc.kill()
    proc.communicate()
    rc, _, err = finish(vmd("train", "--resume", out))
    assert rc == 0, err
    assert_same_run(reference, out)


def test_one_writer_per_run_directory_while_readers_keep_working(tmp_path):
    out = tmp_path / "run"
    first = vmd("train", *ARGS, "--set", "train.steps=100000", "--out", out)
    try:
        wait_for_step(out, 100, first)
        time.sleep(0.3)  # past the checkpoint of step 100
        for args in (("train", *ARGS, "--out", out), ("train", "--resume", out)):
            rc, _, err = finish(vmd(*args))
            assert rc == 2 and "being written by another vmd train" in err and "Traceback" not in err, err
        rc, out_text, err = finish(vmd("eval", out, "--samples", "200", "--json"))
        assert rc == 0, err
        assert json.loads(out_text)["samples"] == 200
    finally:
        first.send_signal(signal.SIGTERM)
        rc, _, err = finish(first)
    assert rc == 143, err
    rc, _, err = finish(vmd("train", "--resume", out, "--set", "train.steps=" + str(
        json.loads((out / "meta.json").read_text())["step"] + 5)))
    assert rc == 0, err  # the lock went with the process


@pytest.fixture
def small_disk(tmp_path):
    """A 700 KB file system: room for one checkpoint of the run below, not for the temporary
    copy of a second. A tmpfs where mounting is allowed (root, as CI runs); elsewhere the same
    fault through a file-size limit (writes fail with EFBIG instead of ENOSPC)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)], capture_output=True).returncode:
        import resource

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (350_000, 350_000))

        yield mount, limit, "File too large"
        return
    try:
        yield mount, None, "No space left on device"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(small_disk):
    mount, limit, reason = small_disk
    out = mount / "run"
    rc, _, err = finish(vmd("train", *ARGS, "--set", "train.steps=20", "--out", out))
    assert rc == 0, err
    rc, _, err = finish(vmd("train", "--resume", out, "--set", "train.steps=40", preexec_fn=limit))
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err and lines[-1].startswith("error:") and reason in lines[-1], err
    from vmd.checkpoint import load_model

    assert load_model(out)[2] == 20 and json.loads((out / "meta.json").read_text())["step"] == 20
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_the_data_is_made_is_one_word_and_leaves_nothing(tmp_path, sig, code, word):
    env = {**ENV, "VMD_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "vmd_cli", "train", "--preset", "sudoku-mdm-tiny",
                             "--set", "task.grids=100000", "--out", str(tmp_path / "run")],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stderr:  # the worker pool is making puzzles once this is said
        if line.startswith("generating"):
            break
    time.sleep(0.5)
    proc.send_signal(sig)
    rc, _, err = finish(proc, timeout=30)
    assert rc == code and err.strip().splitlines()[-1] == word and "Traceback" not in err, err
    assert not any((tmp_path / "cache").rglob("*.safetensors*"))


def test_a_sigterm_after_the_error_is_said_ends_quietly(tmp_path):
    """A launcher stops the other ranks with SIGTERM while one is leaving after its own error: the
    signal then lands in an exit handler, and must end the process, not print a traceback from it."""
    code = ("import atexit, sys, time\n"
            "atexit.register(time.sleep, 30)\n"  # a slow exit handler, as torch's own can be
            f"sys.argv = ['vmd', 'eval', {str(tmp_path / 'no-run')!r}]\n"
            "from vmd_cli.main import main\n"
            "main()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    for line in proc.stderr:  # the error is said: the process is in its exit handlers
        if line.startswith("error:"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc, timeout=20)
    assert rc == -signal.SIGTERM and "Traceback" not in err and "Terminated" not in err, err
