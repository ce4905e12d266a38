"""Run directories: safetensors weights, the config as YAML, metadata as JSON.

    RUN_DIR/config.yaml              the resolved config (also inside each .safetensors)
    RUN_DIR/model.safetensors        weights for inference (the EMA weights where kept)
    RUN_DIR/train_state.safetensors  raw + EMA weights, optimiser moments, RNG: what --resume needs
    RUN_DIR/meta.json                step, metrics, versions

Each file is written to a temporary name, flushed and renamed over the old one, so an
interrupted write leaves the previous file whole (vmd/atomic.py); a write that fails (a full
disk) is one CheckpointError line naming the file. Each .safetensors file carries its own
step, config and run id, so it is consistent by itself, and the files of one run can be
told from another's. Nothing here unpickles: loading never runs code from the file.

A file is checked before any work: its header (format, step, config, run id); then the model
of that config, built with no more memory than the file's weights need (a header asking for a
huge model is refused before it is allocated), against the names and shapes in the file; then
its values (finite weights, random states that fit a generator).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch.overrides import TorchFunctionMode

import vmd
from vmd import config as C
from vmd.atomic import atomic_write
from vmd.errors import CheckpointError, ConfigError

FORMAT = "vmd-run-1"
MODEL_FILE, STATE_FILE, META_FILE, CONFIG_FILE = "model.safetensors", "train_state.safetensors", "meta.json", "config.yaml"
_RUN_ID = re.compile(r"[\w-]{1,64}")
_ARCH = ("method", "task", "model", "latent")  # the config sections that shape a run's model
_TASK_BUDGET = 2 ** 27  # entries of a task's own tables (a synthetic task's exact joint: vocab ** length), 1 GB
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
    full = {"step": step, "method": cfg.method, "task": C.to_dict(cfg.task), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions(), **meta, "run_id": run_id}
    _write(run_dir / META_FILE, json.dumps(full, indent=2).encode())


@dataclass
class _Header:
    """A .safetensors file's header, checked: nothing of its data read yet."""
    path: Path
    meta: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    cfg: C.Config
    step: int
    run_id: str | None  # None in runs saved before run ids
    task_state: dict[str, str]  # {} in runs of tasks that learn nothing from their data, and older runs


def _regular_or_absent(path: Path) -> None:
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a directory?): vmd cannot read it or save over it; "
                              "move it away")


def _header(path: Path) -> _Header:
    _regular_or_absent(path)
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}: not a run directory, or training has not saved a checkpoint yet")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated or garbled files
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({str(e).splitlines()[0]})") from e
    if meta.get("format") != FORMAT or "config" not in meta or "step" not in meta:
        raise CheckpointError(f"{path} was not written by vmd (missing format, step or config)")
    if not re.fullmatch(r"[0-9]{1,18}", meta["step"]):
        raise CheckpointError(f"{path}: its step {meta['step']!r} is not a non-negative integer")
    run_id = meta.get("run_id")
    if run_id is not None and not _RUN_ID.fullmatch(run_id):
        raise CheckpointError(f"{path}: its run id {run_id[:80]!r} is malformed")
    try:
        cfg = C.load_yaml_text(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved config is invalid: {e}") from e
    try:
        task_state = json.loads(meta.get("task_state", "{}"))
        if not isinstance(task_state, dict) or not all(isinstance(v, str) for v in task_state.values()):
            raise ValueError
    except ValueError:
        raise CheckpointError(f"{path}: its task_state is not a JSON object of strings") from None
    return _Header(path, meta, shapes, cfg, int(meta["step"]), run_id, task_state)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors (its header already checked by ``_header``), all finite."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({str(e).splitlines()[0]})") from e
    floats = {k: v for k, v in tensors.items() if v.is_floating_point() and v.numel()}
    if floats:  # one fused pass: the largest magnitude of each tensor, NaN or inf where any value is
        peaks = torch.stack([p.float() for p in torch._foreach_norm(list(floats.values()), math.inf)])
        if not torch.isfinite(peaks).all():
            bad = list(floats)[int((~torch.isfinite(peaks)).nonzero()[0])]
            raise CheckpointError(f"{path} holds non-finite weights ({bad} has NaN or infinite values)")
    return tensors


def _part(mapping: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in mapping.items() if k.startswith(prefix)}


class _TooBig(Exception):
    pass


class _Budget(TorchFunctionMode):
    """Counts the tensors and elements that factories are asked for while a model is built, and
    stops the build before the one past the budget: a header cannot make vmd build a model far
    larger than its file (a torch.device("meta") build would cost a 2 s import of torch._dynamo)."""

    FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.randn, torch.rand, torch.full}

    def __init__(self, elements: int, tensors: int):
        super().__init__()
        self.elements, self.tensors = elements, tensors

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES:
            size = kwargs.get("size", args[:1] if func is torch.full else args)
            if isinstance(size, int):
                size = (size,)
            if len(size) == 1 and isinstance(size[0], (tuple, list)):
                size = size[0]
            self.elements -= math.prod(n for n in size if isinstance(n, int))
            self.tensors -= 1
            if self.elements < 0 or self.tensors < 0:
                raise _TooBig
        return func(*args, **kwargs)


def _build(head: _Header, shapes: dict[str, tuple], prefix: str = ""):
    """(task, model) of a file's config, checked against the names and shapes of its weights
    (``shapes``, under ``prefix`` in the file). The model is built within a budget of twice the
    file's weights (plus room for small buffers), and its task within ``_TASK_BUDGET``, so an
    implausible config is refused before it takes the memory."""
    from vmd.model import build_model
    from vmd.tasks import make_task

    held = sum(math.prod(s) for s in shapes.values())
    budget = 2 * held + 2 ** 20
    try:
        try:
            with _Budget(_TASK_BUDGET, 10 ** 6):
                task = make_task(head.cfg.task, head.task_state or None)
        except _TooBig:
            raise CheckpointError(f"{head.path}: its saved config describes a task whose tables exceed "
                                  f"{_TASK_BUDGET:,} entries; refusing to build it") from None
        with _Budget(budget, 2 * len(shapes) + 64):
            model = build_model(head.cfg, task.vocab, task.length, task.layout)
    except _TooBig:
        raise CheckpointError(f"{head.path}: weights do not match the saved config: it describes a model of more "
                              f"than {budget:,} parameters, the file holds {held:,}; refusing to build it") from None
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{head.path}: its config describes no model vmd can build ({e})") from e
    _match(head.path, {k: tuple(v.shape) for k, v in model.state_dict().items()}, shapes, prefix)
    return task, model


def _match(path: Path, expected: dict[str, tuple], found: dict[str, tuple], prefix: str = "") -> None:
    """The file's tensor names and shapes (``found``, under ``prefix``) against the model's."""
    if found == expected:
        return
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    detail = (f"{prefix}{missing[0]} is missing" if missing else f"{prefix}{extra[0]} is not in the model" if extra
              else f"{prefix}{wrong[0]} is {found[wrong[0]]} in the file, {expected[wrong[0]]} for the config")
    size = lambda shapes: sum(math.prod(s) for s in shapes.values())  # noqa: E731
    raise CheckpointError(f"{path}: weights do not match the saved config: it describes {size(expected):,} "
                          f"parameters, the file holds {size(found):,} ({detail})")


def _identity(head: _Header) -> tuple:
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
        differ = [k for k in arch if k in new_arch and arch[k] != new_arch[k]]
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
    _regular_or_absent(path)
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
              "run_id": (lambda v: isinstance(v, str) and _RUN_ID.fullmatch(v), "a run id")}
    for key, (ok, what) in checks.items():
        if key in data and not ok(data[key]):
            raise CheckpointError(f"{path}: {key} is {str(data[key])[:60]!r}, expected {what}")
    return data


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


def _open_model(source: Path):
    """(header, task, model, tensors) of a model file, checked; in a run directory, also that the
    training state's header (when there is a readable one) is of the same run."""
    path = _model_file(source)
    head = _header(path)
    state_path = path.parent / STATE_FILE
    if Path(source).is_dir() and state_path.is_file():
        try:
            state = _header(state_path)
        except CheckpointError:
            state = None  # a broken training state is for --resume to report; these weights are whole
        if state is not None:
            _same_run(_identity(state), _identity(head))
    task, model = _build(head, head.shapes)
    return head, task, model, _read_tensors(path)


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


def _check_optimizer(path: Path, head: _Header, model: torch.nn.Module, param_groups) -> None:
    """The optimiser's parameter list and moment shapes against the parameters it was made for
    (all of the model's, or with train.freeze_denoiser the ones that train, in the model's order)."""
    from vmd.model import adapt

    params = adapt.freeze_denoiser(model) if head.cfg.train.freeze_denoiser else list(model.parameters())
    try:
        listed = [i for g in param_groups for i in g["params"]]
    except (TypeError, KeyError):
        raise CheckpointError(f"{path}: optimiser metadata is malformed (param_groups)") from None
    if listed != list(range(len(params))):
        raise CheckpointError(f"{path}: optimiser state does not match the model: it lists {len(listed)} parameters, "
                              f"the model trains {len(params)}")
    for key, shape in _part(head.shapes, "opt.").items():
        idx, _, name = key.partition(".")
        if not idx.isdecimal() or int(idx) >= len(params):
            raise CheckpointError(f"{path}: optimiser state opt.{key} is for no parameter of the model")
        want = () if name == "step" else tuple(params[int(idx)].shape)
        if shape != want and not (name == "step" and math.prod(shape) == 1):
            raise CheckpointError(f"{path}: optimiser state does not match the model: opt.{key} is {shape}, "
                                  f"its parameter {want}")


def _fits(device: torch.device | str, state: torch.Tensor) -> bool:
    """Whether ``state`` is a random state a generator on ``device`` takes (tried on a fresh one)."""
    try:
        torch.Generator(device=device).set_state(state)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def _devices() -> list[str]:
    """Each device type here: a saved noise state (the training device's generator) must fit one."""
    mps = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if mps else [])


def _check_rng(path: Path, rng: dict[str, torch.Tensor]) -> None:
    for name, devices in (("data", ["cpu"]), ("noise", _devices())):
        t = rng.get(name)
        if t is None:
            raise CheckpointError(f"{path} has no rng.{name}: the random state resume needs is missing")
        if t.dtype != torch.uint8 or t.dim() != 1 or not any(_fits(d, t) for d in devices):
            where = "the CPU" if name == "data" else "any device here"
            raise CheckpointError(f"{path}: rng.{name} ({t.dtype}, {tuple(t.shape)}) is not a random generator "
                                  f"state of {where}")


def set_rng_state(generator: torch.Generator, state: torch.Tensor, name: str, run_dir: Path) -> None:
    """``generator.set_state(state)``; a state from another device type (a run trained on a GPU,
    resumed on the CPU) raised as one line."""
    if not _fits(generator.device, state):
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
        _regular_or_absent(run_dir / name)
    path = run_dir / STATE_FILE
    head = _header(path)
    meta = read_meta(run_dir)
    if (run_dir / MODEL_FILE).exists():
        _same_run(_identity(head), _identity(_header(run_dir / MODEL_FILE)))
    if meta:
        arch = {k: meta[k] for k in ("method", "task") if k in meta}
        _same_run(_identity(head), (run_dir / META_FILE, meta.get("run_id"), meta.get("step"), arch))
    unknown = [k for k in head.shapes if k.split(".", 1)[0] not in ("model", "ema", "opt", "rng")]
    if unknown:
        raise CheckpointError(f"{path}: unexpected tensor {unknown[0]}")
    _, model = _build(head, _part(head.shapes, "model."), "model.")
    if _part(head.shapes, "ema."):
        _match(path, _part(head.shapes, "model."), _part(head.shapes, "ema."), "ema.")
    try:
        param_groups = json.loads(head.meta["param_groups"])
        scaler = json.loads(head.meta.get("scaler", "null"))
        if not isinstance(param_groups, list) or not (scaler is None or isinstance(scaler, dict)):
            raise ValueError
        if scaler and not (_SCALER <= scaler.keys() and all(map(_number, scaler.values()))):
            raise ValueError
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: optimiser metadata is missing or corrupt") from e
    _check_optimizer(path, head, model, param_groups)
    tensors = _read_tensors(path)
    _check_rng(path, _part(tensors, "rng."))

    opt_state: dict[int, dict] = {}
    for key, v in _part(tensors, "opt.").items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = v
    return {
        "config": head.cfg,
        "step": head.step,
        "run_id": head.run_id,
        "task_state": head.task_state,
        "model": _part(tensors, "model."),
        "ema": _part(tensors, "ema.") or None,
        "optimizer": {"state": opt_state, "param_groups": param_groups},
        "scaler": scaler,
        "rng": _part(tensors, "rng."),
    }


def load_into(module: torch.nn.Module, state: dict, run_dir: Path) -> None:
    load_weights(module, state, Path(run_dir) / STATE_FILE)
