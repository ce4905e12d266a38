"""Broken, foreign or oversized run files give one CheckpointError line before any work, and a
failed write leaves neither a half-written checkpoint nor a temporary file (issue 23)."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import tiny
from vmd import checkpoint
from vmd.runtime import atomic
from vmd.runtime.errors import CheckpointError
from vmd.train import train


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    """Two tiny finished runs (an MDM and a VMD), trained once for the whole file; tests damage copies."""
    base = tmp_path_factory.mktemp("runs")
    done = {method: train(tiny(method, steps=10), base / method) for method in ("mdm", "vmd")}
    for trainer in done.values():
        if hasattr(trainer, "close"):
            trainer.close()  # its run directory's writer lock
    return done


@pytest.fixture
def runs(trainers):
    return trainers["mdm"].run_dir.parent


@pytest.fixture
def run(runs, tmp_path):
    shutil.copytree(runs / "vmd", tmp_path / "run")
    return tmp_path / "run"


def rewrite(path, header=None, tensors=None):
    """Rewrite a .safetensors file with some header fields changed (None deletes one) and/or its
    tensors changed by ``tensors(dict)``."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    data = load_file(str(path))
    for k, v in (header or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    if tensors:
        tensors(data)
    save_file(data, str(path), metadata=meta)


def edit_meta(run_dir, change):
    path = run_dir / "meta.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def set_item(d, key, value):
    d[key] = value
    return d


def config_with(text, section="model", **values):
    data = yaml.safe_load(text)
    data[section].update(values)
    return yaml.safe_dump(data)


def state_config(run_dir):
    with safe_open(str(run_dir / "train_state.safetensors"), "pt") as f:
        return f.metadata()["config"]


def drop_run_ids(run_dir):
    for name in ("model.safetensors", "train_state.safetensors"):
        rewrite(run_dir / name, header={"run_id": None})
    edit_meta(run_dir, lambda m: {k: v for k, v in m.items() if k != "run_id"})


STATE, MODEL = "train_state.safetensors", "model.safetensors"

RESUME_DAMAGE = {
    "step not a number": (lambda d: rewrite(d / STATE, {"step": "abc"}), "step 'abc' is not a non-negative integer"),
    "negative step": (lambda d: rewrite(d / STATE, {"step": "-5"}), "step '-5' is not a non-negative integer"),
    "no format": (lambda d: rewrite(d / STATE, {"format": None}), "not written by vmd"),
    "config not YAML": (lambda d: rewrite(d / STATE, {"config": "model: [1,"}), "saved config is invalid"),
    "config out of range": (lambda d: rewrite(d / STATE, {"config": config_with(state_config(d), dim=-4)}),
                            "saved config is invalid.*model.dim"),
    "meta.json a list": (lambda d: (d / "meta.json").write_text("[1, 2]"), "expected a JSON object, got list"),
    "meta.json not JSON": (lambda d: (d / "meta.json").write_text("{"), "meta.json is not valid JSON"),
    "elapsed_s a string": (lambda d: edit_meta(d, lambda m: set_item(m, "elapsed_s", "abc")), "elapsed_s is 'abc'"),
    "train_metrics a list": (lambda d: edit_meta(d, lambda m: set_item(m, "train_metrics", [1])), "train_metrics"),
    "meta.json a directory": (lambda d: ((d / "meta.json").unlink(), (d / "meta.json").mkdir()),
                              "meta.json is not a regular file"),
    "model.safetensors a directory": (lambda d: ((d / MODEL).unlink(), (d / MODEL).mkdir()),
                                      "model.safetensors is not a regular file"),
    "config.yaml a directory": (lambda d: ((d / "config.yaml").unlink(), (d / "config.yaml").mkdir()),
                                "config.yaml is not a regular file"),
    "rng.data missing": (lambda d: rewrite(d / STATE, tensors=lambda t: t.pop("rng.data")), "has no rng.data"),
    "rng.noise short": (lambda d: rewrite(d / STATE, tensors=lambda t: set_item(t, "rng.noise", t["rng.noise"][:100])),
                        r"rng.noise \(torch.uint8, \(100,\)\) is not a random generator state"),
    "rng.data float": (lambda d: rewrite(d / STATE, tensors=lambda t: set_item(t, "rng.data", t["rng.data"].float())),
                       "rng.data .torch.float32"),
    "NaN weight": (lambda d: rewrite(d / STATE, tensors=lambda t: t["model.head.bias"].__setitem__(0, float("nan"))),
                   r"holds non-finite weights \(model.head.bias"),
    "inf moment": (lambda d: rewrite(d / STATE, tensors=lambda t: t["opt.0.exp_avg"].__setitem__(0, float("inf"))),
                   r"holds non-finite weights \(opt.0.exp_avg"),
    "moment of the wrong shape": (lambda d: rewrite(d / STATE, tensors=lambda t: set_item(t, "opt.3.exp_avg_sq",
                                                                                         torch.zeros(7))),
                                  r"optimiser state does not match the model: opt.3.exp_avg_sq is \(7,\)"),
    "moment for no parameter": (lambda d: rewrite(d / STATE, tensors=lambda t: set_item(t, "opt.999.exp_avg",
                                                                                       torch.zeros(7))),
                                "opt.999.exp_avg is for no parameter"),
    "param groups short": (lambda d: rewrite(d / STATE, {"param_groups": json.dumps([{"params": [0, 1]}])}),
                           "optimiser state does not match the model: it lists 2 parameters"),
    "scaler malformed": (lambda d: rewrite(d / STATE, {"scaler": json.dumps({"scale": 1.0})}),
                         "optimiser metadata is missing or corrupt"),
    "weight of the wrong shape": (lambda d: rewrite(d / STATE, tensors=lambda t: set_item(t, "model.head.bias",
                                                                                         torch.zeros(3))),
                                  r"weights do not match the saved config.*model.head.bias is \(3,\)"),
    "model.safetensors of another run": (lambda d: rewrite(d / MODEL, {"run_id": "0" * 32}), "run ids differ"),
    "meta.json of another run": (lambda d: edit_meta(d, lambda m: set_item(m, "run_id", "0" * 32)), "run ids differ"),
    "model.safetensors ahead of the state": (lambda d: rewrite(d / MODEL, {"step": "500"}),
                                             "model.safetensors does not belong with .*at step 500"),
}


@pytest.mark.parametrize("damage, message", RESUME_DAMAGE.values(), ids=RESUME_DAMAGE.keys())
def test_a_damaged_run_is_refused_before_resuming(run, damage, message):
    damage(run)
    with pytest.raises(CheckpointError, match=message) as e:
        checkpoint.load_train_state(run)
    assert "\n" not in str(e.value) and str(run) in str(e.value)


MODEL_DAMAGE = {
    "step not a number": (lambda d: rewrite(d / MODEL, {"step": "abc"}), "step 'abc' is not a non-negative integer"),
    "NaN weight": (lambda d: rewrite(d / MODEL, tensors=lambda t: t["head.weight"].__setitem__((0, 0), float("nan"))),
                   r"model.safetensors holds non-finite weights \(head.weight"),
    "a directory": (lambda d: (shutil.rmtree(d), d.mkdir(), (d / MODEL).mkdir()),
                    "model.safetensors is not a regular file"),
    "of another run": (lambda d: rewrite(d / MODEL, {"run_id": "0" * 32}), "run ids differ"),
    "invalid config": (lambda d: rewrite(d / MODEL, {"config": "method: diffusion"}), "saved config is invalid"),
}


@pytest.mark.parametrize("damage, message", MODEL_DAMAGE.values(), ids=MODEL_DAMAGE.keys())
def test_a_damaged_model_is_refused_before_use(run, damage, message):
    damage(run)
    with pytest.raises(CheckpointError, match=message) as e:
        checkpoint.load_model(run)
    assert "\n" not in str(e.value)


def test_a_model_of_another_run_without_run_ids_is_told_by_its_config(runs, run):
    """Runs saved before run ids: an MDM's model.safetensors inside a VMD run is refused by its config."""
    drop_run_ids(run)
    checkpoint.load_model(run)  # an old run by itself still loads
    shutil.copy(runs / "mdm" / MODEL, run / MODEL)
    rewrite(run / MODEL, {"run_id": None})
    with pytest.raises(CheckpointError, match="does not belong with .*configs differ in method"):
        checkpoint.load_model(run)
    with pytest.raises(CheckpointError, match="configs differ in method"):
        checkpoint.load_train_state(run)


def test_files_one_save_behind_and_old_runs_are_accepted(run):
    """A save stopped after train_state leaves model.safetensors and meta.json one checkpoint
    behind: that resumes. A run without run ids or meta.json resumes too."""
    rewrite(run / MODEL, {"step": "5"})
    edit_meta(run, lambda m: set_item(m, "step", 5))
    assert checkpoint.load_model(run)[2] == 5
    state = checkpoint.load_train_state(run)
    assert state["step"] == 10 and len(state["run_id"]) == 32
    drop_run_ids(run)
    (run / "meta.json").unlink()
    assert checkpoint.read_meta(run) == {}
    assert checkpoint.load_train_state(run)["run_id"] is None


def save_again(trainer, run_dir, **kwargs):
    checkpoint.save(run_dir, trainer.cfg, trainer.step, trainer.model.state_dict(), trainer.ema, trainer.opt, None,
                    trainer.streams.state(), {}, **kwargs)


def run_id_of(run_dir):
    ids = {json.loads((run_dir / "meta.json").read_text())["run_id"]}
    for name in (MODEL, STATE):
        with safe_open(str(run_dir / name), "pt") as f:
            ids.add(f.metadata()["run_id"])
    assert len(ids) == 1, ids
    return ids.pop()


def test_a_run_keeps_one_run_id_in_all_its_files(trainers, runs, tmp_path):
    (tmp_path / "r").mkdir()
    save_again(trainers["mdm"], tmp_path / "r")  # a new run directory: a new run id
    first = run_id_of(tmp_path / "r")
    assert first != run_id_of(runs / "mdm")
    save_again(trainers["mdm"], tmp_path / "r")  # a later save of the run keeps its id
    assert run_id_of(tmp_path / "r") == first
    save_again(trainers["mdm"], tmp_path / "r", run_id="a" * 32)
    assert run_id_of(tmp_path / "r") == "a" * 32


BOMB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from vmd import checkpoint
from vmd.runtime.errors import CheckpointError
for run in sys.argv[1:]:
    for load in (checkpoint.load_model, checkpoint.load_train_state,
                 lambda d: checkpoint.export_model(d, d + "/out.safetensors")):
        try:
            load(run)
            sys.exit("loaded")
        except CheckpointError as e:
            print(e)
"""


def test_a_header_that_asks_for_a_huge_model_is_refused_in_little_memory(runs, tmp_path):
    """A file of a few hundred KB whose config says dim 4096 x 64 layers (13 G parameters), one
    layer of width 65536, or a synthetic task of 1000 ** 4 sequences (an 8 TB joint) must not make
    vmd build that: each is refused within a 3 GB address space (torch alone takes about 1 GB), by
    load_model, load_train_state and export_model."""
    dirs = []
    for i, change in enumerate([{"dim": 4096, "layers": 64}, {"dim": 65536, "layers": 1},
                                {"section": "task", "kind": "d1", "vocab": 1000}]):
        dirs.append(tmp_path / str(i))
        shutil.copytree(runs / "vmd", dirs[-1])
        for name in (MODEL, STATE):
            rewrite(dirs[-1] / name, {"config": config_with(state_config(dirs[-1]), **change)})
    out = subprocess.run([sys.executable, "-c", BOMB, *map(str, dirs)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 9 and all("refusing to build it" in line for line in lines), lines
    assert not any((d / "out.safetensors").exists() for d in dirs)


def test_the_cli_gives_one_line_for_a_damaged_run(run):
    rewrite(run / MODEL, tensors=lambda t: t["head.bias"].__setitem__(0, float("inf")))
    (run / "meta.json").write_text("[]")
    for args, words in ((["eval", run], "holds non-finite weights"), (["train", "--resume", run], "got list")):
        out = subprocess.run([sys.executable, "-m", "vmd_cli.main", *map(str, args)], capture_output=True, text=True)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("error: ") and out.stderr.strip().count("\n") == 0 and words in out.stderr


# --- writing --------------------------------------------------------------------------------

def temps(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs root), else None: the caller then fakes a full disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                 capture_output=True).returncode == 0
    except OSError:  # no mount command
        mounted = False
    yield disk if mounted else None
    if mounted:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_keeps_the_previous_checkpoint_and_no_temporary_file(trainers, small_disk, tmp_path, monkeypatch):
    disk = small_disk or tmp_path / "fake"
    disk.mkdir(exist_ok=True)
    (disk / STATE).write_bytes(b"the previous checkpoint")
    if small_disk is None:  # no tmpfs here: the disk fills as the data is flushed
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {disk / STATE}: No space left on device; "
                                              "the previous train_state.safetensors is kept"):
        save_again(trainers["mdm"], disk)
    assert (disk / STATE).read_bytes() == b"the previous checkpoint"
    assert temps(disk) == []


def test_a_checkpoint_path_taken_by_a_directory_or_a_vanished_run_dir_is_one_line(trainers, tmp_path):
    with pytest.raises(CheckpointError, match="No such file or directory"):
        save_again(trainers["mdm"], tmp_path / "r")
    (tmp_path / "r" / MODEL).mkdir(parents=True)
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {tmp_path / 'r' / MODEL}: Is a directory"):
        save_again(trainers["mdm"], tmp_path / "r")
    assert temps(tmp_path / "r") == []


def test_ctrl_c_during_a_write_removes_the_temporary_file(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(b"old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(tmp_path / "f", b"new")
    assert (tmp_path / "f").read_bytes() == b"old" and temps(tmp_path) == []


def test_stale_temporary_files_are_cleaned(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    names = [f".model.safetensors.tmp-{dead}", f".meta.json.tmp-{os.getpid()}", ".config.yaml.tmp-1", MODEL]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert atomic.clean_stale_temps(tmp_path) == [tmp_path / names[0]]  # the others' writers may be alive
    assert sorted(atomic.clean_stale_temps(tmp_path, locked=True)) == sorted(tmp_path / n for n in names[1:3])
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_the_checks_leave_a_good_run_loadable(runs):
    for method in ("mdm", "vmd"):
        model, cfg, step = checkpoint.load_model(runs / method)
        assert cfg.method == method and step == 10
        assert checkpoint.load_train_state(runs / method)["step"] == 10


def test_an_edited_config_yaml_is_refused_not_ignored(run):
    original = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(original.replace("layers: 1", "layers: 3", 1))
    for load in (checkpoint.load_model, checkpoint.load_train_state):
        with pytest.raises(CheckpointError, match="config.yaml says model.layers: 3, but the run was trained with 1"):
            load(run)
    (run / "config.yaml").write_text(original)  # put back: loads again
    checkpoint.load_model(run)


def test_a_truncated_model_file_beside_a_whole_training_state_resumes(run):
    data = (run / MODEL).read_bytes()
    (run / MODEL).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError):
        checkpoint.load_model(run)  # the damaged weights themselves are refused ...
    state = checkpoint.load_train_state(run)  # ... but what --resume needs is whole
    assert state["step"] == 10
