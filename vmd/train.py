"""The training loop: AdamW, warm-up then cosine decay, gradient clipping, EMA, AMP,
atomic checkpoints and exact resume. Progress goes to a callback (the CLI draws it)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from vmd import checkpoint
from vmd.config import Config
from vmd.diffusion import METRICS, diffusion_loss, kl_weight
from vmd.errors import CheckpointError, ConfigError, TrainingDiverged
from vmd.model import adapt, build_model, count_parameters
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


class TrainingInterrupted(Exception):
    def __init__(self, step: int, run_dir: Path):
        super().__init__(f"interrupted at step {step}; checkpoint saved in {run_dir}")
        self.step, self.run_dir = step, run_dir


@dataclass
class Trainer:
    cfg: Config
    run_dir: Path
    callback: Callable[[Progress], None] | None = None
    step: int = 0
    elapsed: float = 0.0
    last_metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        cfg = self.cfg
        self.run_dir = Path(self.run_dir)
        self.device = resolve_device(cfg.device.device)
        torch.manual_seed(cfg.train.seed)
        self.task = make_task(cfg.task)
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

    @classmethod
    def create(cls, cfg: Config, run_dir: Path, callback=None) -> "Trainer":
        """A new run in ``run_dir``, which must not hold a run already (nothing is overwritten)."""
        if checkpoint.has_checkpoint(run_dir):
            raise CheckpointError(f"{run_dir} already holds a run; continue it with --resume or choose another --out")
        trainer = cls(cfg, run_dir, callback)
        if cfg.train.init_from:
            trainer.start_from(cfg.train.init_from)
        return trainer

    def start_from(self, source: str) -> None:
        """Replace the initial weights (and the EMA's) with a trained model's (vmd/model/adapt.py)."""
        try:
            trained, _, _ = checkpoint.load_model(adapt.source_path(source))
        except CheckpointError as e:
            raise CheckpointError(f"train.init_from: {e}") from None
        adapt.start_from(self.model, trained, source)
        if self.ema is not None:
            for k, v in self.model.state_dict().items():
                self.ema[k].copy_(v)

    @classmethod
    def resume(cls, run_dir: Path, overrides: Callable[[Config], Config] | None = None, callback=None) -> "Trainer":
        state = checkpoint.load_train_state(run_dir)
        cfg = overrides(state["config"]) if overrides else state["config"]
        trainer = cls(cfg, run_dir, callback)
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
        trainer.data_gen.set_state(state["rng"]["data"])
        trainer.noise_gen.set_state(state["rng"]["noise"].to(torch.uint8))
        trainer.step = state["step"]
        meta = checkpoint.read_meta(run_dir)
        trainer.elapsed = float(meta.get("elapsed_s", 0.0))
        trainer.last_metrics = meta.get("train_metrics", {})
        return trainer

    def save(self) -> None:
        meta = {"elapsed_s": round(self.elapsed, 2), "parameters": self.parameters,
                "train_metrics": self.last_metrics, "device": str(self.device)}
        checkpoint.save(self.run_dir, self.cfg, self.step, self.model.state_dict(), self.ema, self.opt,
                        self.scaler.state_dict() if self.scaler.is_enabled() else None,
                        {"data": self.data_gen.get_state(), "noise": self.noise_gen.get_state()}, meta)

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

    def _check_finite(self, loss_sum: torch.Tensor, since: int) -> None:
        """Raise if any loss since step ``since`` was not finite. Checked where the loop logs or saves,
        not every step: reading a value back waits for the device, and on a GPU a wait every step
        keeps the host from queueing the next step's work while this one runs."""
        if not torch.isfinite(loss_sum):
            raise TrainingDiverged(f"loss is {float(loss_sum)} between steps {since} and {self.step}; the last checkpoint "
                                   f"in {self.run_dir} is kept; lower train.lr or use fp32")

    def run(self) -> dict[str, float]:
        tc = self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        window, window_steps, checked = None, 0, self.step  # the metrics summed on the device since the last log
        t_last, steps_last = time.perf_counter(), self.step
        try:
            while self.step < tc.steps:
                t0 = time.perf_counter()
                terms = self.train_step()
                window, window_steps = (terms if window is None else window + terms), window_steps + 1
                log = self.step % tc.log_every == 0 or self.step == tc.steps
                save = self.step % tc.checkpoint_every == 0 or self.step == tc.steps
                if log or save:
                    self._check_finite(window[_LOSS], checked)
                    checked = self.step
                self.elapsed += time.perf_counter() - t0
                if log:
                    self.last_metrics = dict(zip(METRICS, (window / window_steps).tolist()))
                    window, window_steps = None, 0
                    now = time.perf_counter()
                    rate = (self.step - steps_last) / max(now - t_last, 1e-9)
                    t_last, steps_last = now, self.step
                    if self.callback:
                        self.callback(Progress(self.step, tc.steps, self.last_metrics, self.opt.param_groups[0]["lr"],
                                               kl_weight(self.cfg.latent, self.step), rate, self.elapsed))
                if save:
                    self.save()
        except KeyboardInterrupt:
            if window is not None:  # never save weights that went non-finite since the last check
                self._check_finite(window[_LOSS], checked)
            self.save()
            raise TrainingInterrupted(self.step, self.run_dir) from None
        return self.last_metrics


def train(cfg: Config, run_dir: Path, callback=None) -> Trainer:
    """Train a new run into ``run_dir`` to the end."""
    trainer = Trainer.create(cfg, run_dir, callback)
    trainer.run()
    return trainer
