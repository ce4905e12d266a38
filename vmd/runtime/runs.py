"""Opening a run directory for training: a new run (``create``) or a saved one (``resume``).

Under torchrun rank 0 alone makes, checks and locks the directory; what it meets there is raised
on every rank (``World.on_main``), so that all of them stop, or none. Every rank builds the model
and, on resume, reads the checkpoint (several machines: a shared file system).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch

from vmd import checkpoint, config as C
from vmd.runtime import distributed, history
from vmd.runtime.atomic import clean_stale_temps, is_temp_name
from vmd.config import Config
from vmd.runtime.devices import resolve_device
from vmd.diffusion import METRICS
from vmd.runtime.errors import CheckpointError, ConfigError, shown
from vmd.runtime.runlock import LOCK_FILE, RunLock, ensure_run_dir


def _join(cfg: Config) -> distributed.World:
    return distributed.join(resolve_device(cfg.device.device).type, cfg.device.timeout)


# the keys that shape a run's model (and so its checkpoint): a resumed run may not change them
_SHAPE = {"text": ("task.length", "task.tokenizer", "task.vocab_size"), "synthetic": ("task.kind", "task.vocab"),
          "sudoku": ()}
_NOT_SHAPE = {"model.dropout", "latent.beta", "latent.kl_warmup_steps", "latent.free_bits"}


def model_changes(old: Config, new: Config) -> list[tuple[str, object, object]]:
    """(key, old, new) for each key that shapes the model and differs: the method, the task and the
    keys that size its model, the model's and (for a VMD) the latent's, but for training knobs."""
    a, b = C.to_dict(old), C.to_dict(new)
    flat = {f"{section}.{k}": (v, b[section][k]) for section in ("task", "model", "latent") for k, v in a[section].items()}
    keys = ["task.name", *_SHAPE[old.task.name], *(k for k in flat if k.startswith("model.")),
            *(k for k in flat if k.startswith("latent.") and "vmd" in (old.method, new.method))]
    changes = [("method", old.method, new.method)] if old.method != new.method else []
    return changes + [(k, *flat[k]) for k in keys if k not in _NOT_SHAPE and flat[k][0] != flat[k][1]]


def refuse_occupied(run_dir: Path) -> None:
    """A new run goes into a folder that does not exist yet or is empty (but for a lock or temporary
    files a run of ours left): never among files that are not its own, which it would replace."""
    if not run_dir.is_dir() or checkpoint.has_checkpoint(run_dir):
        return  # (a run: its lock and its own checks below say whether it is busy or to be resumed)
    try:
        others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE and not is_temp_name(p.name))
    except OSError as e:
        raise CheckpointError(f"cannot read the folder {run_dir}: {e.strerror or e}") from None
    if others:
        free = next(name for name in (f"run-{i}" if i else "run" for i in range(len(others) + 1)) if name not in others)
        listed = ", ".join(shown(name, 40) for name in others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise CheckpointError(f"{run_dir} is not empty (it holds {listed}): a new run needs a new or empty folder, so "
                              f"that none of its files replaces one of yours; choose another --out, or a folder inside "
                              f"this one (e.g. --out {run_dir / free})")


def create(cls, cfg: Config, run_dir: Path, callback=None):
    """A new ``cls`` (Trainer) run in ``run_dir``, which must not hold a run already (nothing is
    overwritten). The directory is made and locked first, so a run that cannot write it fails
    before any work; a start that fails leaves no directory it made."""
    world = _join(cfg)
    made = not Path(run_dir).exists()

    def open_new() -> RunLock:
        refuse_occupied(Path(run_dir))
        lock = RunLock(ensure_run_dir(run_dir))
        try:
            if checkpoint.has_checkpoint(run_dir):
                raise CheckpointError(f"{run_dir} already holds a run; continue it with --resume or choose another --out")
            clean_stale_temps(run_dir, locked=True)
            history.truncate_after(run_dir, 0)  # a run killed before its first checkpoint left nothing to keep
        except BaseException:
            lock.release()
            raise
        return lock

    lock = None
    try:
        lock = world.on_main(open_new)
        trainer = cls(cfg, run_dir, callback, lock=lock)
        trainer.made_dir = made
        if cfg.train.init_from:
            trainer.start_from(cfg.train.init_from)
    except BaseException:
        if lock is not None:
            lock.release()
        if made and world.main:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return trainer


def discard_unsaved(trainer) -> None:
    """After a failure, remove a new run's directory that this start made and no checkpoint was
    written into (a data download that failed, a corpus that could not be read): no litter, and the
    next try may use the same --out. Rank 0 alone."""
    if getattr(trainer, "made_dir", False) and trainer.saved_step is None and trainer.world.main:
        if not checkpoint.has_checkpoint(trainer.run_dir):
            shutil.rmtree(trainer.run_dir, ignore_errors=True)


def resume(cls, run_dir: Path, overrides: Callable[[Config], Config] | None = None, callback=None):
    """The ``cls`` (Trainer) run in ``run_dir`` as its last checkpoint left it, locked for writing.
    ``overrides`` may change how it trains, not its model's shape (one line naming the key)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist" if not run_dir.exists()
                              else f"{run_dir} is a file, not a run directory")
    if not (run_dir / checkpoint.STATE_FILE).is_file():  # not a run: leave no lock file behind in it
        checkpoint.load_train_state(run_dir)  # raises the one-line reason
    saved = checkpoint.read_header(run_dir / checkpoint.STATE_FILE).cfg
    cfg = overrides(saved) if overrides else saved
    changed = model_changes(saved, cfg)
    if changed:
        k, old, new = changed[0]
        raise ConfigError(f"{k} is {old!r} in {run_dir}; a resumed run keeps its model, so it cannot become "
                          f"{new!r}: train a new run (train.init_from={run_dir} starts one from these weights)")
    world = _join(cfg)

    def open_saved() -> tuple[RunLock, dict]:
        lock = RunLock(run_dir)
        try:
            return lock, checkpoint.load_train_state(run_dir)
        except BaseException:
            lock.release()
            raise

    lock, state = world.on_main(open_saved) or (None, None)
    try:
        state = state or checkpoint.load_train_state(run_dir)
        trainer = _restore(cls, run_dir, state, cfg, callback, lock)
        if world.main:
            clean_stale_temps(run_dir, locked=True)
            history.truncate_after(run_dir, trainer.step)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return trainer


def _restore(cls, run_dir: Path, state: dict, cfg: Config, callback, lock):
    meta = checkpoint.read_meta(run_dir)
    trainer = cls(cfg, run_dir, callback, lock=lock, task_state=state["task_state"] or None)
    checkpoint.load_into(trainer.model, state["model"], run_dir)
    if trainer.ema is not None:
        saved = state["ema"] or trainer.model.state_dict()
        for k, v in trainer.ema.items():
            v.copy_(saved[k])
    try:
        trainer.opt.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{run_dir}: optimiser state does not match the model ({e})") from e
    if state["scaler"] and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.step = trainer.saved_step = state["step"]
    trainer.streams.restore(state["rng"], trainer.step,
                            lambda g, s, name: checkpoint.set_rng_state(g, s, name, run_dir))
    trainer.elapsed = float(meta.get("elapsed_s", 0.0))
    trainer.last_metrics = meta.get("train_metrics", {})
    if meta.get("step") == trainer.step:  # meta.json is written last: a save cut short leaves an older one
        _restore_window(trainer, meta.get("window"), run_dir)
    return trainer


def _restore_window(trainer, window, run_dir: Path) -> None:
    """The metrics summed since the last log, as the checkpoint saved them, so that a resumed run
    logs the same windows (and the same values) as an uninterrupted one."""
    if window is None:
        return
    try:
        total, steps = window["sum"], int(window["steps"])
        if steps and (len(total) != len(METRICS) or steps < 0):
            raise ValueError
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(f"{run_dir / checkpoint.META_FILE}: 'window' is malformed") from None
    if steps:
        trainer._window = torch.tensor(total, dtype=torch.float32, device=trainer.device)
        trainer._window_steps = steps
