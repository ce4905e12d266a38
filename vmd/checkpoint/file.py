"""One checkpoint file, read and checked before anything in it is trusted.

A .safetensors file written by ``vmd.checkpoint.save`` is checked before any work: its header
(format, step, config, run id); then the model of that config, built with no more memory than
the file's weights need (a header asking for a huge model is refused before it is allocated),
against the names and shapes in the file; then its values (finite weights, random states that
fit a generator, optimiser moments that fit the parameters). Nothing here unpickles: reading
never runs code from the file. How the files of one run fit together is ``vmd.checkpoint``'s.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch.overrides import TorchFunctionMode

from vmd import config as C
from vmd.runtime.errors import CheckpointError, ConfigError

FORMAT = "vmd-run-1"
RUN_ID = re.compile(r"[\w-]{1,64}")
_TASK_BUDGET = 2 ** 27  # entries of a task's own tables (a synthetic task's exact joint: vocab ** length), 1 GB


@dataclass
class Header:
    """A .safetensors file's header, checked: nothing of its data read yet."""
    path: Path
    meta: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    cfg: C.Config
    step: int
    run_id: str | None  # None in runs saved before run ids
    task_state: dict[str, str]  # {} in runs of tasks that learn nothing from their data, and older runs


def regular_or_absent(path: Path) -> None:
    """A directory where a run file belongs is refused: it could be neither read nor saved over."""
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a directory?): vmd cannot read it or save over it; "
                              "move it away")


def read_header(path: Path) -> Header:
    """The file's header, checked (format, step, run id, config, task state): no tensor read yet."""
    regular_or_absent(path)
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
    if run_id is not None and not RUN_ID.fullmatch(run_id):
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
    return Header(path, meta, shapes, cfg, int(meta["step"]), run_id, task_state)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors (its header already checked by ``read_header``), all finite."""
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


def part(mapping: dict, prefix: str) -> dict:
    """The entries under ``prefix`` ("model.", "opt.", ...), the prefix taken off their names."""
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


def build_checked(head: Header, shapes: dict[str, tuple], prefix: str = ""):
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
    match_shapes(head.path, {k: tuple(v.shape) for k, v in model.state_dict().items()}, shapes, prefix)
    return task, model


def match_shapes(path: Path, expected: dict[str, tuple], found: dict[str, tuple], prefix: str = "") -> None:
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


def check_optimizer(path: Path, head: Header, model: torch.nn.Module, param_groups) -> None:
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
    for key, shape in part(head.shapes, "opt.").items():
        idx, _, name = key.partition(".")
        if not idx.isdecimal() or int(idx) >= len(params):
            raise CheckpointError(f"{path}: optimiser state opt.{key} is for no parameter of the model")
        want = () if name == "step" else tuple(params[int(idx)].shape)
        if shape != want and not (name == "step" and math.prod(shape) == 1):
            raise CheckpointError(f"{path}: optimiser state does not match the model: opt.{key} is {shape}, "
                                  f"its parameter {want}")


def generator_fits(device: torch.device | str, state: torch.Tensor) -> bool:
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


def check_rng(path: Path, rng: dict[str, torch.Tensor]) -> None:
    """The data and noise random states resume restores (``data`` and ``noise``, and ``data.K`` and
    ``noise.K`` for the other shards of a data-parallel run), each one a generator here takes."""
    for name in ("data", "noise"):
        if name not in rng:
            raise CheckpointError(f"{path} has no rng.{name}: the random state resume needs is missing")
    for name, t in rng.items():
        kind, _, shard = name.partition(".")
        if kind not in ("data", "noise") or not (shard == "" or shard.isdigit()):
            raise CheckpointError(f"{path}: unexpected tensor rng.{name}")
        devices = ["cpu"] if kind == "data" else _devices()
        if t.dtype != torch.uint8 or t.dim() != 1 or not any(generator_fits(d, t) for d in devices):
            where = "the CPU" if kind == "data" else "any device here"
            raise CheckpointError(f"{path}: rng.{name} ({t.dtype}, {tuple(t.shape)}) is not a random generator "
                                  f"state of {where}")
