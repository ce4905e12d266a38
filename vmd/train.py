"""The training loop: AdamW, warm-up then cosine decay, gradient clipping, EMA, AMP,
atomic checkpoints and exact resume. Progress goes to a callback (the CLI draws it)."""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from vmd import checkpoint, history
from vmd.atomic import clean_stale_temps
from vmd.config import Config
from vmd.diffusion import METRICS, diffusion_loss, kl_weight
from vmd.errors import CheckpointError, ConfigError, TrainingDiverged
from vmd.evaluate import likelihood
from vmd.model import adapt, build_model, count_parameters
from vmd.models import resolve as resolve_model
from vmd.runlock import RunLock, ensure_run_dir
from vmd.schedule import make_schedule
from vmd.tasks import make_task

_LOSS = METRICS.index("loss")  # the loss's row in Loss.stacked()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device.device: 'cuda' was asked for but no CUDA device is available; use auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device.device: 'mps' was asked for but MPS is not available; use auto or cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """Mixed precision as the preset says; fp32 is no autocast at all."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Progress:
    step: int
    total: int
    metrics: dict[str, float]
    lr: float
    beta: float
    steps_per_s: float
    elapsed_s: float
    valid: dict[str, float] = field(default_factory=dict)  # validation metrics, where computed at this step


class TrainingInterrupted(Exception):
    """Training stopped on a signal after a whole step, with a checkpoint of that step saved."""

    def __init__(self, step: int, run_dir: Path, signum: int = signal.SIGINT):
        super().__init__(f"{signal.Signals(signum).name} at step {step}; checkpoint saved in {run_dir}")
        self.step, self.run_dir, self.signum = step, run_dir, signum

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class StopSignals:
    """While active (in the main thread), SIGINT and SIGTERM do not interrupt: they are recorded in
    ``signum`` and the loop stops at the next step boundary. A step is never cut in half and a
    checkpoint never half written, so an interrupted run resumes bitwise like an uninterrupted one."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _record(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:  # e.g. SIGINT under nohup stays ignored
                    self._previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@dataclass
class Trainer:
    cfg: Config
    run_dir: Path
    callback: Callable[[Progress], None] | None = None
    step: int = 0
    elapsed: float = 0.0
    last_metrics: dict = field(default_factory=dict)
    saved_step: int | None = None  # the step of the newest checkpoint on disk, None before the first
    lock: RunLock | None = None  # held from create / resume until the run ends (``close``)
    task_state: dict | None = None  # a resumed run's stored task state (vmd.tasks.make_task)

    def __post_init__(self):
        cfg = self.cfg
        self.run_dir = Path(self.run_dir)
        self.device = resolve_device(cfg.device.device)
        torch.manual_seed(cfg.train.seed)
        self.task = make_task(cfg.task, self.task_state)
        self.model = build_model(cfg, self.task.vocab, self.task.length, self.task.layout).to(self.device)
        self.parameters = count_parameters(self.model)
        self.schedule = make_schedule(cfg.diffusion.schedule)
        # fused on CPU and CUDA: one kernel per parameter, where the CPU foreach fallback runs a loop
        # of small ops (the synthetic presets train 5-29% faster, docs/results-synthetic.md)
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {"foreach": True}
        params = adapt.freeze_denoiser(self.model) if cfg.train.freeze_denoiser else list(self.model.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                     betas=(0.9, 0.99), **fused)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.device.precision == "fp16")
        self.ema = {k: v.detach().clone().float() for k, v in self.model.state_dict().items()} if cfg.train.ema > 0 else None
        if self.ema is not None:  # the pairs one fused lerp updates (the model has no persistent buffers)
            named = dict(self.model.named_parameters())
            self._ema_pairs = ([self.ema[k] for k in named], [p.detach() for p in named.values()])
        self.data_gen = torch.Generator().manual_seed(cfg.train.seed)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(cfg.train.seed + 1)
        self._window, self._window_steps = None, 0  # the metrics summed on the device since the last log
        self._valid = None  # the validation sequences, read on first use

    @classmethod
    def create(cls, cfg: Config, run_dir: Path, callback=None) -> "Trainer":
        """A new run in ``run_dir``, which must not hold a run already (nothing is overwritten). The
        directory is made and locked first, so a run that cannot write it fails before any work."""
        made = not Path(run_dir).exists()
        run_dir = ensure_run_dir(run_dir)
        lock = RunLock(run_dir)
        try:
            if checkpoint.has_checkpoint(run_dir):
                raise CheckpointError(f"{run_dir} already holds a run; continue it with --resume or choose another --out")
            clean_stale_temps(run_dir, locked=True)
            history.truncate_after(run_dir, 0)  # a run killed before its first checkpoint left nothing to keep
            trainer = cls(cfg, run_dir, callback, lock=lock)
            if cfg.train.init_from:
                trainer.start_from(cfg.train.init_from)
        except BaseException:
            lock.release()
            if made:  # a start that failed before any work leaves no directory behind
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return trainer

    def start_from(self, source: str) -> None:
        """Replace the initial weights (and the EMA's) with a trained model's (vmd/model/adapt.py)."""
        try:
            trained, _, _ = checkpoint.load_model(resolve_model(source))
        except CheckpointError as e:
            raise CheckpointError(f"train.init_from: {e}") from None
        adapt.start_from(self.model, trained, source)
        if self.ema is not None:
            for k, v in self.model.state_dict().items():
                self.ema[k].copy_(v)

    @classmethod
    def resume(cls, run_dir: Path, overrides: Callable[[Config], Config] | None = None, callback=None) -> "Trainer":
        """The run in ``run_dir`` as its last checkpoint left it, locked for writing."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"run directory {run_dir} does not exist" if not run_dir.exists()
                                  else f"{run_dir} is a file, not a run directory")
        if not (run_dir / checkpoint.STATE_FILE).is_file():  # not a run: leave no lock file behind in it
            checkpoint.load_train_state(run_dir)  # raises the one-line reason
        lock = RunLock(run_dir)
        try:
            trainer = cls._restore(run_dir, overrides, callback, lock)
            clean_stale_temps(run_dir, locked=True)
            history.truncate_after(run_dir, trainer.step)
        except BaseException:
            lock.release()
            raise
        return trainer

    @classmethod
    def _restore(cls, run_dir: Path, overrides, callback, lock) -> "Trainer":
        state = checkpoint.load_train_state(run_dir)
        meta = checkpoint.read_meta(run_dir)
        cfg = overrides(state["config"]) if overrides else state["config"]
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
        if state["scaler"]:
            trainer.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(trainer.data_gen, state["rng"]["data"], "data", run_dir)
        checkpoint.set_rng_state(trainer.noise_gen, state["rng"]["noise"].to(torch.uint8), "noise", run_dir)
        trainer.step = trainer.saved_step = state["step"]
        trainer.elapsed = float(meta.get("elapsed_s", 0.0))
        trainer.last_metrics = meta.get("train_metrics", {})
        if meta.get("step") == trainer.step:  # meta.json is written last: a save cut short leaves an older one
            trainer._restore_window(meta.get("window"), run_dir)
        return trainer

    def _restore_window(self, window, run_dir: Path) -> None:
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
            self._window = torch.tensor(total, dtype=torch.float32, device=self.device)
            self._window_steps = steps

    def save(self) -> None:
        window = {"sum": self._window.tolist() if self._window is not None else None, "steps": self._window_steps}
        meta = {"elapsed_s": round(self.elapsed, 2), "parameters": self.parameters,
                "train_metrics": self.last_metrics, "device": str(self.device), "window": window}
        checkpoint.save(self.run_dir, self.cfg, self.step, self.model.state_dict(), self.ema, self.opt,
                        self.scaler.state_dict() if self.scaler.is_enabled() else None,
                        {"data": self.data_gen.get_state(), "noise": self.noise_gen.get_state()}, meta,
                        task_state=self.task.state())
        self.saved_step = self.step

    def close(self) -> None:
        """Release the run directory for the next writer (also done by the OS when the process ends)."""
        if self.lock is not None:
            self.lock.release()

    def _update_ema(self) -> None:
        """One fused lerp over all parameters (weights stay fp32 under AMP)."""
        decay = min(self.cfg.train.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self._ema_pairs[0], self._ema_pairs[1], 1 - decay)

    def train_step(self) -> dict[str, float]:
        cfg, tc = self.cfg, self.cfg.train
        for group in self.opt.param_groups:
            group["lr"] = tc.lr * lr_factor(self.step, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        x0, given = self.task.train_batch(tc.batch_size, self.data_gen)
        x0 = x0.to(self.device)
        given = given.to(self.device) if given is not None else None
        with autocast(self.device, cfg.device.precision):
            out = diffusion_loss(self.model, x0, self.schedule, cfg.diffusion, cfg.latent, self.step, given, self.noise_gen)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        if tc.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.step += 1
        if self.ema is not None:
            self._update_ema()
        return out.stacked()

    def _check_finite(self, since: int) -> None:
        """Raise if any loss since step ``since`` was not finite. Checked where the loop logs or saves,
        not every step: reading a value back waits for the device, and on a GPU a wait every step
        keeps the host from queueing the next step's work while this one runs."""
        if self._window is None or torch.isfinite(self._window[_LOSS]):
            return
        kept = (f"the checkpoint of step {self.saved_step} in {self.run_dir} is kept" if self.saved_step is not None
                else "no checkpoint had been written yet")
        advice = ("lower train.lr or raise train.warmup_steps" if self.cfg.device.precision == "fp32"
                  else "lower train.lr, or train in fp32 (device.precision=fp32)")
        raise TrainingDiverged(f"loss is {float(self._window[_LOSS])} between steps {since} and {self.step}; "
                               f"{kept}; {advice}")

    def _log(self, rate: float) -> None:
        """Close the metrics window: ``last_metrics``, validation where due, a line of metrics.jsonl,
        the callback."""
        tc = self.cfg.train
        self.last_metrics = dict(zip(METRICS, (self._window / self._window_steps).tolist()))
        lr, beta = self.opt.param_groups[0]["lr"], kl_weight(self.cfg.latent, self.step)
        valid = self.validate() if tc.eval_every and self.step % tc.eval_every == 0 else {}
        history.append(self.run_dir, {"step": self.step, "steps": self._window_steps, **self.last_metrics, "lr": lr,
                                      "beta": beta, "steps_per_s": round(rate, 3), "elapsed_s": round(self.elapsed, 2),
                                      **valid})
        self._window, self._window_steps = None, 0
        if self.callback:
            self.callback(Progress(self.step, tc.steps, self.last_metrics, lr, beta, rate, self.elapsed, valid))

    def validate(self) -> dict[str, float]:
        """``valid_bpt``: the NELBO in bits per token of the task's validation sequences (tasks that
        have a validation split), seeded apart from training's draws, so a run resumes the same."""
        if not hasattr(self.task, "eval_sequences"):
            return {}
        if self._valid is None:
            self._valid = self.task.eval_sequences("valid", self.cfg.train.eval_sequences)
        self.model.eval()
        try:
            with autocast(self.device, self.cfg.device.precision):
                r = likelihood(self.model, self._valid, self.cfg, draws=1, seed=0,
                               batch_size=self.cfg.train.batch_size, device=self.device)
        finally:
            self.model.train()
        return {"valid_bpt": r["bits"]}

    def run(self) -> dict[str, float]:
        """Train to ``train.steps``. SIGINT (Ctrl-C) or SIGTERM ends the current step, saves a
        checkpoint and raises ``TrainingInterrupted``; the lock is released at the end either way."""
        try:
            with StopSignals() as stop:
                try:
                    self._loop(stop)
                except KeyboardInterrupt:  # raised by a callback, between two steps
                    stop.signum = stop.signum or signal.SIGINT
                if stop.signum is not None:
                    if self.saved_step != self.step:
                        self._check_finite(self.saved_step or 0)  # never save weights that went non-finite
                        self.save()
                    raise TrainingInterrupted(self.step, self.run_dir, stop.signum)
        finally:
            self.close()
        return self.last_metrics

    def _loop(self, stop: StopSignals) -> None:
        tc = self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        checked = self.step
        t_last, steps_last = time.perf_counter(), self.step
        while self.step < tc.steps and stop.signum is None:
            t0 = time.perf_counter()
            terms = self.train_step()
            self._window = terms if self._window is None else self._window + terms
            self._window_steps += 1
            log = self.step % tc.log_every == 0 or self.step == tc.steps
            save = self.step % tc.checkpoint_every == 0 or self.step == tc.steps
            if log or save:
                self._check_finite(checked)
                checked = self.step
            self.elapsed += time.perf_counter() - t0
            if log:
                now = time.perf_counter()
                rate = (self.step - steps_last) / max(now - t_last, 1e-9)
                self._log(rate)
                t_last, steps_last = time.perf_counter(), self.step  # validation is not training time
            if save:
                self.save()


def train(cfg: Config, run_dir: Path, callback=None) -> Trainer:
    """Train a new run into ``run_dir`` to the end."""
    trainer = Trainer.create(cfg, run_dir, callback)
    trainer.run()
    return trainer
