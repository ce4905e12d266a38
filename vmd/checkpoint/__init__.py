"""Run directories: safetensors weights, the config as YAML, metadata as JSON.

    RUN_DIR/config.yaml              the resolved config (also inside each .safetensors)
    RUN_DIR/model.safetensors        weights for inference (the EMA weights where kept)
    RUN_DIR/train_state.safetensors  raw + EMA weights, optimiser moments, RNG: what --resume needs
    RUN_DIR/meta.json                step, metrics, versions

Each file is written to a temporary name, flushed and renamed over the old one, so an
interrupted write leaves the previous file whole (vmd/runtime/atomic.py); a write that fails (a full
disk) is one CheckpointError line naming the file. Each .safetensors file carries its own
step, config and run id, so it is consistent by itself, and the files of one run can be
told from another's. Nothing here unpickles: loading never runs code from the file.

Each file is checked by itself (vmd/checkpoint/file.py: its header, the model of its config built
within the memory its weights need, its values), and here against the other files of its run.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

import vmd
from vmd import config as C
from vmd.runtime.atomic import atomic_write
from vmd.checkpoint.file import (FORMAT, RUN_ID, Header, build_checked, check_optimizer, check_rng, generator_fits,
                                 match_shapes, part, read_header, read_tensors, regular_or_absent)
from vmd.runtime.errors import CheckpointError, ConfigError, shown
from vmd.model.adapt import load_weights

MODEL_FILE, STATE_FILE, META_FILE, CONFIG_FILE = "model.safetensors", "train_state.safetensors", "meta.json", "config.yaml"
_ARCH = ("method", "task", "model", "latent")  # the config sections that shape a run's model
_SCALER = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}  # GradScaler.state_dict()


def new_run_id() -> str:
    """A run's identity, made once when it is created and saved in each of its files."""
    return uuid.uuid4().hex


def _write(path: Path, data: bytes) -> None:
    """``atomic_write``, an OS error (full disk, read-only, gone) raised as one line naming the file."""
    try:
        atomic_write(path, data)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}; the previous {path.name} "
                              "is kept") from e


def _tensors(prefix: str, state: dict) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in state.items()}


def versions() -> dict[str, str]:
    return {"vmd": vmd.__version__, "torch": torch.__version__, "python": platform.python_version()}


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / MODEL_FILE).exists() or (Path(run_dir) / STATE_FILE).exists()


def _saved_run_id(run_dir: Path) -> str | None:
    with contextlib.suppress(Exception):
        with safe_open(str(Path(run_dir) / STATE_FILE), framework="pt") as f:
            return (f.metadata() or {}).get("run_id")
    return None


def save(run_dir: Path, cfg: C.Config, step: int, model_state: dict, ema_state: dict | None,
         optimizer, scaler_state: dict | None, rng: dict[str, torch.Tensor], meta: dict,
         run_id: str | None = None, task_state: dict[str, str] | None = None) -> None:
    """Write the training state, then the inference weights, then the metadata. Stopped between
    two files, the later ones stay one checkpoint behind: loading accepts that, not the reverse.
    ``run_id``: the run's (``new_run_id``); by default ``meta["run_id"]``, else the one of the
    train_state.safetensors in ``run_dir``, else a new one. ``task_state``: what the task learned
    from its data (``task.state()``, e.g. a text vocabulary), stored in both weight files."""
    run_dir = Path(run_dir)
    run_id = run_id or meta.get("run_id") or _saved_run_id(run_dir) or new_run_id()
    cfg_yaml = C.to_yaml(cfg)
    opt = optimizer.state_dict()
    tensors = _tensors("model.", model_state)
    if ema_state is not None:
        tensors.update(_tensors("ema.", ema_state))
    for idx, st in opt["state"].items():
        tensors.update(_tensors(f"opt.{idx}.", {k: torch.as_tensor(v) for k, v in st.items()}))
    tensors.update(_tensors("rng.", rng))
    ident = {"format": FORMAT, "step": str(step), "config": cfg_yaml, "run_id": run_id,
             "task_state": json.dumps(task_state or {})}
    header = {**ident, "param_groups": json.dumps(opt["param_groups"]), "scaler": json.dumps(scaler_state)}
    _write(run_dir / STATE_FILE, st_save(tensors, metadata=header))

    weights = ema_state if ema_state is not None else model_state
    _write(run_dir / MODEL_FILE, st_save(_tensors("", weights), metadata=ident))
    _write(run_dir / CONFIG_FILE, cfg_yaml.encode())
    full = {"step": step, "method": cfg.method, "task": C.task_keys(cfg.task), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions(), **meta, "run_id": run_id}
    _write(run_dir / META_FILE, json.dumps(full, indent=2).encode())


def _identity(head: Header) -> tuple:
    arch = C.to_dict(head.cfg)
    return head.path, head.run_id, head.step, {k: arch[k] for k in _ARCH}


def _same_run(newer: tuple, older: tuple) -> None:
    """Whether ``older`` (model.safetensors or meta.json) belongs with ``newer`` (train_state, written
    first by ``save``): the same run id (runs without one: the same model config), at the same step
    or, after a save stopped between the files, an earlier one."""
    (new_path, new_id, new_step, new_arch), (path, run_id, step, arch) = newer, older
    problem = None
    if new_id and run_id and new_id != run_id:
        problem = f"their run ids differ ({run_id} and {new_id})"
    elif not (new_id and run_id):
        def same(a, b) -> bool:  # meta.json's task lists the task's own keys only
            return all(b.get(k) == v for k, v in a.items()) if isinstance(a, dict) and isinstance(b, dict) else a == b

        differ = [k for k in arch if k in new_arch and not same(arch[k], new_arch[k])]
        problem = f"their configs differ in {differ[0]}" if differ else None
    if problem is None and step is not None and step > new_step:
        problem = f"it is at step {step}, {new_path.name} at step {new_step}"
    if problem:
        raise CheckpointError(f"{path} does not belong with {new_path}: {problem}; keep the files of one run together")


def _check_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise CheckpointError(f"{run_dir} is a file, not a run directory (give a directory written by vmd train, "
                              "or a model .safetensors file)")
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    return run_dir


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_meta(run_dir: Path) -> dict:
    """A run's meta.json, the types resume reads checked. {} when there is none: ``save`` writes it
    last, so a run stopped in its first save has a train_state without it, and resuming that only
    restarts the elapsed-time count."""
    path = Path(run_dir) / META_FILE
    regular_or_absent(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from e
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    checks = {"step": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
              "elapsed_s": (lambda v: _number(v) and 0 <= v < math.inf, "a non-negative number of seconds"),
              "train_metrics": (lambda v: isinstance(v, dict) and all(map(_number, v.values())),
                                "a mapping of metric names to numbers"),
              "run_id": (lambda v: isinstance(v, str) and RUN_ID.fullmatch(v), "a run id")}
    for key, (ok, what) in checks.items():
        if key in data and not ok(data[key]):
            raise CheckpointError(f"{path}: {key} is {str(data[key])[:60]!r}, expected {what}")
    return data


def _model_file(source: Path) -> Path:
    """A run directory's model.safetensors, or ``source`` itself when it is a lone model file."""
    path = Path(source)
    return path if path.suffix == ".safetensors" and path.is_file() else _check_dir(path) / MODEL_FILE


def _config_file_agrees(run_dir: Path, head: Header) -> None:
    """A run's config.yaml is a record of the config inside its checkpoint: an edit to it would be
    ignored, so it is refused, naming the first key that differs and the way that does change a run."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return
    try:
        written = C.to_dict(C.load_yaml_text(path.read_text(errors="replace")))
    except (ConfigError, OSError) as e:
        raise CheckpointError(f"{path} cannot be read as a config ({e}); restore it from the run's checkpoint") from None
    saved = C.to_dict(head.cfg)
    for section, values in saved.items():
        for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
            other = written[section] if not key else written.get(section, {}).get(key)
            if other != value:
                name = f"{section}.{key}" if key else section
                raise CheckpointError(f"{path} says {name}: {shown(other, 40)}, but the run was trained with "
                                      f"{shown(value, 40)}: config.yaml is a record, not a setting; put it back, and "
                                      "change a run with vmd train --resume RUN --set KEY=VALUE")


def _open_model(source: Path):
    """(header, task, model, tensors) of a model file, checked; in a run directory, also that the
    training state's header (when there is a readable one) is of the same run."""
    path = _model_file(source)
    head = read_header(path)
    state_path = path.parent / STATE_FILE
    if Path(source).is_dir() and state_path.is_file():
        try:
            state = read_header(state_path)
        except CheckpointError:
            state = None  # a broken training state is for --resume to report; these weights are whole
        if state is not None:
            _same_run(_identity(state), _identity(head))
    task, model = build_checked(head, head.shapes)
    if Path(source).is_dir():
        _config_file_agrees(source, head)
    return head, task, model, read_tensors(path)


def load_model(run_dir: Path, device="cpu"):
    """The inference model of a run directory, or of a lone model.safetensors file (a bundled
    model): (model in eval mode, config, step)."""
    return load_run(run_dir, device)[:3]


def load_run(run_dir: Path, device="cpu"):
    """``load_model``'s (model, config, step) and the run's task, rebuilt from its stored state
    (a text run's vocabulary or tokenizer), so that it needs no data to format or sample."""
    head, task, model, tensors = _open_model(run_dir)
    load_weights(model, tensors, head.path)
    return model.to(device).eval(), head.cfg, head.step, task


def export_model(src: Path, dst: Path, half: bool = False) -> None:
    """Copy a model file (a run directory's, or a lone one) to ``dst``, checked on the way; with
    ``half`` its floating-point weights are stored as fp16, half the size (a bundled model has a
    size limit). ``load_model`` reads them back into the fp32 model; fp16 keeps 11 significant
    bits, so logits move by rounding only."""
    head, _, _, tensors = _open_model(src)
    if half:
        for k, v in tensors.items():
            if v.is_floating_point():
                if v.abs().max() >= torch.finfo(torch.float16).max:
                    raise CheckpointError(f"{head.path}: {k} holds values beyond fp16's range; store it in fp32")
                tensors[k] = v.half()
    _write(Path(dst), st_save(tensors, metadata=head.meta))


def set_rng_state(generator: torch.Generator, state: torch.Tensor, name: str, run_dir: Path) -> None:
    """``generator.set_state(state)``; a state from another device type (a run trained on a GPU,
    resumed on the CPU) raised as one line."""
    if not generator_fits(generator.device, state):
        raise CheckpointError(f"{Path(run_dir) / STATE_FILE}: rng.{name} does not fit this run's "
                              f"{generator.device.type} random generator (saved on another kind of device?)")
    generator.set_state(state)


def load_train_state(run_dir: Path) -> dict:
    """Everything --resume needs, from train_state.safetensors, checked before any work: the
    other files of the run are files (or absent) and of the same run, the tensors fit the model
    of the saved config (weights, EMA, optimiser moments), the weights are finite and the random
    states fit a generator."""
    run_dir = _check_dir(run_dir)
    for name in (MODEL_FILE, META_FILE, CONFIG_FILE):
        regular_or_absent(run_dir / name)
    path = run_dir / STATE_FILE
    head = read_header(path)
    meta = read_meta(run_dir)
    if (run_dir / MODEL_FILE).exists():
        try:
            weights = read_header(run_dir / MODEL_FILE)
        except CheckpointError:
            weights = None  # damaged (truncated): resume needs only the training state, and rewrites it at its save
        if weights is not None:
            _same_run(_identity(head), _identity(weights))
    if meta:
        arch = {k: meta[k] for k in ("method", "task") if k in meta}
        _same_run(_identity(head), (run_dir / META_FILE, meta.get("run_id"), meta.get("step"), arch))
    unknown = [k for k in head.shapes if k.split(".", 1)[0] not in ("model", "ema", "opt", "rng")]
    if unknown:
        raise CheckpointError(f"{path}: unexpected tensor {unknown[0]}")
    _, model = build_checked(head, part(head.shapes, "model."), "model.")
    _config_file_agrees(run_dir, head)
    if part(head.shapes, "ema."):
        match_shapes(path, part(head.shapes, "model."), part(head.shapes, "ema."), "ema.")
    try:
        param_groups = json.loads(head.meta["param_groups"])
        scaler = json.loads(head.meta.get("scaler", "null"))
        if not isinstance(param_groups, list) or not (scaler is None or isinstance(scaler, dict)):
            raise ValueError
        if scaler and not (_SCALER <= scaler.keys() and all(map(_number, scaler.values()))):
            raise ValueError
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: optimiser metadata is missing or corrupt") from e
    check_optimizer(path, head, model, param_groups)
    tensors = read_tensors(path)
    check_rng(path, part(tensors, "rng."))

    opt_state: dict[int, dict] = {}
    for key, v in part(tensors, "opt.").items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = v
    return {
        "config": head.cfg,
        "step": head.step,
        "run_id": head.run_id,
        "task_state": head.task_state,
        "model": part(tensors, "model."),
        "ema": part(tensors, "ema.") or None,
        "optimizer": {"state": opt_state, "param_groups": param_groups},
        "scaler": scaler,
        "rng": part(tensors, "rng."),
    }


def load_into(module: torch.nn.Module, state: dict, run_dir: Path) -> None:
    load_weights(module, state, Path(run_dir) / STATE_FILE)
