"""Run directories: safetensors weights, the config as YAML, metadata as JSON.

    RUN_DIR/config.yaml              the resolved config (also inside each .safetensors)
    RUN_DIR/model.safetensors        weights for inference (the EMA weights where kept)
    RUN_DIR/train_state.safetensors  raw + EMA weights, optimiser moments, RNG: what --resume needs
    RUN_DIR/meta.json                step, metrics, versions

Each file is written to a temporary name, flushed and renamed over the old one, so an
interrupted write leaves the previous file whole. Each .safetensors file carries its own
step and config, so it is consistent by itself. Nothing here unpickles: loading never
runs code from the file.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

import vmd
from vmd import config as C
from vmd.errors import CheckpointError

FORMAT = "vmd-run-1"
MODEL_FILE, STATE_FILE, META_FILE, CONFIG_FILE = "model.safetensors", "train_state.safetensors", "meta.json", "config.yaml"


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _tensors(prefix: str, state: dict) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in state.items()}


def versions() -> dict[str, str]:
    return {"vmd": vmd.__version__, "torch": torch.__version__, "python": platform.python_version()}


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / MODEL_FILE).exists() or (Path(run_dir) / STATE_FILE).exists()


def save(run_dir: Path, cfg: C.Config, step: int, model_state: dict, ema_state: dict | None,
         optimizer, scaler_state: dict | None, rng: dict[str, torch.Tensor], meta: dict) -> None:
    """Write the training state, then the inference weights, then the metadata."""
    run_dir = Path(run_dir)
    cfg_yaml = C.to_yaml(cfg)
    opt = optimizer.state_dict()
    tensors = _tensors("model.", model_state)
    if ema_state is not None:
        tensors.update(_tensors("ema.", ema_state))
    for idx, st in opt["state"].items():
        tensors.update(_tensors(f"opt.{idx}.", {k: torch.as_tensor(v) for k, v in st.items()}))
    tensors.update(_tensors("rng.", rng))
    header = {"format": FORMAT, "step": str(step), "config": cfg_yaml,
              "param_groups": json.dumps(opt["param_groups"]), "scaler": json.dumps(scaler_state)}
    atomic_write(run_dir / STATE_FILE, st_save(tensors, metadata=header))

    weights = ema_state if ema_state is not None else model_state
    atomic_write(run_dir / MODEL_FILE, st_save(_tensors("", weights), metadata={"format": FORMAT, "step": str(step), "config": cfg_yaml}))
    atomic_write(run_dir / CONFIG_FILE, cfg_yaml.encode())
    full = {"step": step, "method": cfg.method, "task": C.to_dict(cfg.task), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions(), **meta}
    atomic_write(run_dir / META_FILE, json.dumps(full, indent=2).encode())


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}: not a run directory, or training has not saved a checkpoint yet")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated or garbled files
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({str(e).splitlines()[0]})") from e
    if header.get("format") != FORMAT or "config" not in header or "step" not in header:
        raise CheckpointError(f"{path} was not written by vmd (missing format, step or config)")
    return header, tensors


def _check_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise CheckpointError(f"{run_dir} is a file, not a run directory (give a directory written by vmd train, "
                              "or a model .safetensors file)")
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    return run_dir


def read_meta(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def load_weights(module: torch.nn.Module, state: dict, where,
                 problem: str = "weights do not match the saved config") -> None:
    """``module.load_state_dict(state, strict=True)``, a mismatch raised as one CheckpointError line."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "shapes or names differ"
        raise CheckpointError(f"{where}: {problem} ({first})") from e


def _model_file(source: Path) -> Path:
    """A run directory's model.safetensors, or ``source`` itself when it is a lone model file."""
    path = Path(source)
    return path if path.suffix == ".safetensors" and path.is_file() else _check_dir(path) / MODEL_FILE


def load_model(run_dir: Path, device="cpu"):
    """The inference model of a run directory, or of a lone model.safetensors file (a bundled
    model): (model in eval mode, config, step)."""
    from vmd.model import build_model
    from vmd.tasks import make_task

    path = _model_file(run_dir)
    header, tensors = _read(path)
    cfg = C.load_yaml_text(header["config"])
    task = make_task(cfg.task)
    model = build_model(cfg, task.vocab, task.length, task.layout)
    load_weights(model, tensors, path)
    return model.to(device).eval(), cfg, int(header["step"])


def export_model(src: Path, dst: Path, half: bool = False) -> None:
    """Copy a model file (a run directory's, or a lone one) to ``dst``, checked on the way; with
    ``half`` its floating-point weights are stored as fp16, half the size (a bundled model has a
    size limit). ``load_model`` reads them back into the fp32 model; fp16 keeps 11 significant
    bits, so logits move by rounding only."""
    src = _model_file(src)
    header, tensors = _read(src)
    if half:
        for k, v in tensors.items():
            if v.is_floating_point():
                if v.abs().max() >= torch.finfo(torch.float16).max:
                    raise CheckpointError(f"{src}: {k} holds values beyond fp16's range; store it in fp32")
                tensors[k] = v.half()
    atomic_write(Path(dst), st_save(tensors, metadata=header))


def load_train_state(run_dir: Path) -> dict:
    """Everything --resume needs, from train_state.safetensors alone."""
    run_dir = _check_dir(run_dir)
    header, tensors = _read(run_dir / STATE_FILE)

    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    opt_state: dict[int, dict] = {}
    for key, v in part("opt.").items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = v
    try:
        param_groups = json.loads(header["param_groups"])
        scaler = json.loads(header.get("scaler", "null"))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{run_dir / STATE_FILE}: optimiser metadata is missing or corrupt") from e
    return {
        "config": C.load_yaml_text(header["config"]),
        "step": int(header["step"]),
        "model": part("model."),
        "ema": part("ema.") or None,
        "optimizer": {"state": opt_state, "param_groups": param_groups},
        "scaler": scaler,
        "rng": part("rng."),
    }


def load_into(module: torch.nn.Module, state: dict, run_dir: Path) -> None:
    load_weights(module, state, Path(run_dir) / STATE_FILE)
