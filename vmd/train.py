"""The training loop: AdamW, warm-up then cosine decay, gradient clipping, EMA, AMP, gradient
accumulation, data parallel under torchrun (vmd/runtime/distributed.py), atomic checkpoints and exact
resume. Progress goes to a callback (the CLI draws it); rank 0 alone writes the run."""

from __future__ import annotations

import contextlib
import inspect
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from vmd import checkpoint
from vmd.runtime import distributed, history, runs
from vmd.config import Config
from vmd.runtime.devices import autocast, check_precision, forward_flops, matmul_rate, profiler, resolve_device
from vmd.diffusion import METRICS, diffusion_loss, kl_weight
from vmd.runtime.errors import CheckpointError, TrainingDiverged
from vmd.evaluate import likelihood
from vmd.model import adapt, build_model, count_parameters
from vmd.models import resolve as resolve_model
from vmd.runtime.runlock import RunLock
from vmd.schedule import make_schedule
from vmd.runtime.stopping import StopSignals, TrainingInterrupted
from vmd.tasks import make_task

_LOSS = METRICS.index("loss")  # the loss's row in Loss.stacked()
VALID_BATCH = 32  # validation sequences per pass: whatever the batch, processes and accumulation


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
    tokens_per_s: float = 0.0  # training tokens per second, all processes together
    matmul_share: float = 0.0  # the model's FLOP/s as a share of the device's plain matmul rate (per device)


class LossNet(torch.nn.Module):
    """The loss as a module, so that DistributedDataParallel sees the whole step (the encoder, the
    prior and the denoiser) inside one forward and averages every gradient over the ranks."""

    def __init__(self, model, schedule, cfg: Config):
        super().__init__()
        self.model, self.schedule, self.cfg = model, schedule, cfg

    def forward(self, x0, given, step: int, generator):
        out = diffusion_loss(self.model, x0, self.schedule, self.cfg.diffusion, self.cfg.latent, step, given, generator)
        return out.loss, out.stacked()


@dataclass
class Trainer:
    cfg: Config
    run_dir: Path
    callback: Callable[[Progress], None] | None = None
    step: int = 0
    elapsed: float = 0.0
    last_metrics: dict = field(default_factory=dict)
    saved_step: int | None = None  # the step of the newest checkpoint on disk, None before the first
    lock: RunLock | None = None  # rank 0's, held from create / resume until the run ends (``close``)
    task_state: dict | None = None  # a resumed run's stored task state (vmd.tasks.make_task)
    profile_steps: int = 0  # > 0: a torch profiler trace of that many steps in RUN/profile (vmd.runtime.devices)
    profile_trace: Path | None = None  # the trace's file, once profiling has started
    made_dir: bool = False  # a new run whose directory this start made (vmd.runtime.runs.discard_unsaved)
    on_step: Callable[[int], None] | None = None  # after every step, its number (a progress bar; no metrics)

    def __post_init__(self):
        cfg = self.cfg
        self.run_dir = Path(self.run_dir)
        kind = resolve_device(cfg.device.device).type
        self.world = distributed.join(kind, cfg.device.timeout)
        if self.world.distributed and kind == "mps":
            raise distributed.RankError("data parallel training runs on CUDA GPUs or CPUs; set device.device=cpu "
                                        "for MPS hosts")
        self.device = self.world.device(kind)
        check_precision(self.device, cfg.device.precision)
        self.shard = distributed.check_batch(cfg.train.batch_size, self.world, cfg.train.accumulate)
        torch.manual_seed(cfg.train.seed)
        self.task = make_task(cfg.task, self.task_state)
        self.model = build_model(cfg, self.task.vocab, self.task.length, self.task.layout).to(self.device)
        self.parameters = count_parameters(self.model)
        self.schedule = make_schedule(cfg.diffusion.schedule)
        params = adapt.freeze_denoiser(self.model) if cfg.train.freeze_denoiser else list(self.model.parameters())
        self.net = LossNet(self.model, self.schedule, cfg)
        if self.world.distributed:  # the same initial weights everywhere (seeded), broadcast from rank 0 anyway
            ids = [self.device.index] if self.device.type == "cuda" else None
            # after freezing (DDP waits for the gradients of what requires them); the buffers are constants
            ddp = torch.nn.parallel.DistributedDataParallel
            # torch 2.13 renamed broadcast_buffers (and warns at the old name); older torches know only that
            no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                       else "broadcast_buffers": False}
            self.net = ddp(self.net, device_ids=ids, **no_sync)
            if self.world.rank:  # dropout draws from the global generator: its own masks on each rank
                torch.manual_seed(distributed.shard_seeds(cfg.train.seed, self.world.rank * cfg.train.accumulate)[1] + 1)
        # fused on CPU and CUDA: one kernel per parameter, where the CPU foreach fallback runs a loop
        # of small ops (the synthetic presets train 5-29% faster, docs/results-synthetic.md)
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {"foreach": True}
        self.opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                     betas=(0.9, 0.99), **fused)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.device.precision == "fp16")
        self.ema = {k: v.detach().clone().float() for k, v in self.model.state_dict().items()} if cfg.train.ema > 0 else None
        if self.ema is not None:  # the pairs one fused lerp updates (the model has no persistent buffers)
            named = dict(self.model.named_parameters())
            self._ema_pairs = ([self.ema[k] for k in named], [p.detach() for p in named.values()])
        acc = cfg.train.accumulate
        self.streams = distributed.Streams(cfg.train.seed, range(self.world.rank * acc, (self.world.rank + 1) * acc),
                                           self.device)
        self._window, self._window_steps = None, 0  # the metrics summed on the device since the last log
        self._valid = None  # the validation sequences, read on first use
        self._flops = self._count_flops()  # of one training sequence, forward and backward
        self._interrupted = False  # a KeyboardInterrupt raised by the callback: stop after this step

    @classmethod
    def create(cls, cfg: Config, run_dir: Path, callback=None) -> "Trainer":
        """A new run in ``run_dir``, which must not hold a run already (vmd/runtime/runs.py)."""
        return runs.create(cls, cfg, run_dir, callback)

    @classmethod
    def resume(cls, run_dir: Path, overrides: Callable[[Config], Config] | None = None, callback=None) -> "Trainer":
        """The run in ``run_dir`` as its last checkpoint left it (vmd/runtime/runs.py)."""
        return runs.resume(cls, run_dir, overrides, callback)

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

    def save(self) -> None:
        """A checkpoint of this step, written by rank 0 with every rank's random streams; a failed
        write is raised on every rank."""
        self._sync_window()
        streams = self.world.gather(self.streams.state())
        self.world.on_main(lambda: self._write({k: v for part in streams for k, v in part.items()}))
        self.saved_step = self.step

    def _write(self, rng: dict) -> None:
        window = {"sum": self._window.tolist() if self._window is not None else None, "steps": self._window_steps}
        meta = {"elapsed_s": round(self.elapsed, 2), "parameters": self.parameters,
                "train_metrics": self.last_metrics, "device": str(self.device), "processes": self.world.size,
                "window": window}
        checkpoint.save(self.run_dir, self.cfg, self.step, self.model.state_dict(), self.ema, self.opt,
                        self.scaler.state_dict() if self.scaler.is_enabled() else None, rng, meta,
                        task_state=self.task.state())

    def close(self) -> None:
        """Release the run directory for the next writer (also done by the OS when the process ends)."""
        if self.lock is not None:
            self.lock.release()

    def _update_ema(self) -> None:
        """One fused lerp over all parameters (weights stay fp32 under AMP)."""
        decay = min(self.cfg.train.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self._ema_pairs[0], self._ema_pairs[1], 1 - decay)

    def train_step(self) -> torch.Tensor:
        """One optimiser step over the global batch: this process's shards, each drawn from its own
        streams, gradients accumulated and (under torchrun) averaged over the ranks. Returns this
        process's mean of the ``METRICS`` (on the device, not waited for)."""
        cfg, tc = self.cfg, self.cfg.train
        for group in self.opt.param_groups:
            group["lr"] = tc.lr * lr_factor(self.step, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        self.opt.zero_grad(set_to_none=True)
        terms = None
        last = len(self.streams.shards) - 1
        for i, (data, noise) in enumerate(zip(self.streams.data, self.streams.noise)):
            x0, given = self.task.train_batch(self.shard, data)
            x0 = x0.to(self.device)
            given = given.to(self.device) if given is not None else None
            hold = self.net.no_sync() if self.world.distributed and i < last else contextlib.nullcontext()
            with hold:  # the ranks average their gradients once, in the last pass
                with autocast(self.device, cfg.device.precision):
                    loss, stacked = self.net(x0, given, self.step, noise)
                self.scaler.scale(loss / tc.accumulate).backward()  # / 1 is exact: one pass is unchanged
            terms = stacked if terms is None else terms + stacked
        if tc.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.scaler.step(self.opt)  # skipped by the fp16 scaler when a gradient overflowed
        self.scaler.update()
        self.step += 1
        if self.ema is not None:
            self._update_ema()
        return terms / tc.accumulate

    def _sync_window(self) -> None:
        """Make the metrics window every rank's mean (averaging twice is harmless: a synced window
        is the same on every rank)."""
        if self.world.distributed and self._window is not None:
            self._window = self.world.sum(self._window) / self.world.size

    def _check_finite(self, since: int) -> None:
        """Raise if any loss since step ``since`` was not finite. Checked where the loop logs or saves,
        not every step: reading a value back waits for the device, and on a GPU a wait every step
        keeps the host from queueing the next step's work while this one runs."""
        self._sync_window()
        if self._window is None or torch.isfinite(self._window[_LOSS]):
            return
        kept = (f"the checkpoint of step {self.saved_step} in {self.run_dir} is kept" if self.saved_step is not None
                else "no checkpoint had been written yet")
        advice = ("lower train.lr or raise train.warmup_steps" if self.cfg.device.precision == "fp32"
                  else "lower train.lr, or train in fp32 (device.precision=fp32)")
        raise TrainingDiverged(f"loss is {float(self._window[_LOSS])} between steps {since} and {self.step}; "
                               f"{kept}; {advice}")

    def _count_flops(self) -> float:
        """Forward FLOPs of one training sequence x 3 (the backward is about twice the forward), counted
        by torch on a sequence of token 0 (the count does not depend on the tokens)."""
        x0 = torch.zeros(1, self.task.length, dtype=torch.long, device=self.device)
        self.model.eval()  # no dropout: training's random draws stay untouched
        try:
            with autocast(self.device, self.cfg.device.precision):
                return 3 * forward_flops(lambda: diffusion_loss(
                    self.model, x0, self.schedule, self.cfg.diffusion, self.cfg.latent,
                    generator=torch.Generator(device=self.device).manual_seed(0)))
        finally:
            self.model.train()

    def expected_step_seconds(self) -> float:
        """A training step's time if the model ran at the device's plain matmul rate: a lower bound
        (runs reach 40-50% of it on a CPU, docs/results-text.md), known before the first step."""
        return self._flops * self.cfg.train.batch_size / self.world.size / matmul_rate(self.device,
                                                                                       self.cfg.device.precision)

    def throughput(self, steps_per_s: float) -> tuple[float, float]:
        """Training tokens/s of all processes, and the model's FLOP/s per device as a share of the
        device's plain matmul rate in the run's precision (measured once per process)."""
        sequences = steps_per_s * self.cfg.train.batch_size
        share = self._flops * sequences / self.world.size / matmul_rate(self.device, self.cfg.device.precision)
        return sequences * self.task.length, share

    def _log(self, rate: float) -> None:
        """Close the metrics window: ``last_metrics``, validation where due, a line of metrics.jsonl,
        the callback (rank 0)."""
        tc = self.cfg.train
        self._sync_window()
        self.last_metrics = dict(zip(METRICS, (self._window / self._window_steps).tolist()))
        lr, beta = self.opt.param_groups[0]["lr"], kl_weight(self.cfg.latent, self.step)
        valid = self.validate() if tc.eval_every and self.step % tc.eval_every == 0 else {}
        tokens, share = self.throughput(rate)
        if self.world.main:
            history.append(self.run_dir, {"step": self.step, "steps": self._window_steps, **self.last_metrics,
                                          "lr": lr, "beta": beta, "steps_per_s": round(rate, 3),
                                          "tokens_per_s": round(tokens, 1), "matmul_share": round(share, 4),
                                          "elapsed_s": round(self.elapsed, 2), **valid})
        self._window, self._window_steps = None, 0
        if self.callback:
            try:
                self.callback(Progress(self.step, tc.steps, self.last_metrics, lr, beta, rate, self.elapsed, valid,
                                       tokens, share))
            except KeyboardInterrupt:  # the rest of the step (its checkpoint, every rank's part) goes on
                self._interrupted = True

    def validate(self) -> dict[str, float]:
        """``valid_bpt``: the bound trained (the NELBO, or the k-step sampler's), in bits per token of
        the task's validation sequences (tasks that have a validation split), seeded apart from training's draws, so a run resumes the same;
        under torchrun each rank scores its share of the batches and the sums are reduced."""
        if not hasattr(self.task, "eval_sequences"):
            return {}
        if self._valid is None:
            self._valid = self.task.eval_sequences("valid", self.cfg.train.eval_sequences)
        self.model.eval()
        try:
            with autocast(self.device, self.cfg.device.precision):
                r = likelihood(self.model, self._valid, self.cfg, draws=1, seed=0, batch_size=VALID_BATCH,
                               device=self.device, shard=(self.world.rank, self.world.size),
                               steps=self.cfg.diffusion.steps)
        finally:
            self.model.train()
        total = self.world.sum(torch.tensor([r["bits"] * r["sequences"], r["sequences"]], dtype=torch.float64))
        return {"valid_bpt": float(total[0] / total[1])}

    def run(self) -> dict[str, float]:
        """Train to ``train.steps``. SIGINT (Ctrl-C) or SIGTERM, to any rank, ends the current step on
        every rank, saves a checkpoint and raises ``TrainingInterrupted``; the lock is released at
        the end either way."""
        try:
            with StopSignals() as stop:
                if self._loop(stop):
                    if self.saved_step != self.step:
                        self._check_finite(self.saved_step or 0)  # never save weights that went non-finite
                        self.save()
                    raise TrainingInterrupted(self.step, self.run_dir, stop.signum or signal.SIGTERM)
        finally:
            self.close()
        return self.last_metrics

    def _step(self, prof, t_last: float, steps_last: int, checked: int) -> tuple[float, int, int]:
        """One step of the loop, with its log line and checkpoint where due."""
        tc = self.cfg.train
        t0 = time.perf_counter()
        terms = self.train_step()
        prof.step()
        if self.on_step is not None:
            self.on_step(self.step)
        self._window = terms if self._window is None else self._window + terms
        self._window_steps += 1
        log = self.step % tc.log_every == 0 or self.step == tc.steps
        save = self.step % tc.checkpoint_every == 0 or self.step == tc.steps
        if log or save:
            self._check_finite(checked)
            checked = self.step
        self.elapsed += time.perf_counter() - t0
        if log:
            self._log((self.step - steps_last) / max(time.perf_counter() - t_last, 1e-9))
        if save:
            self.save()
        if log:  # validation and checkpoints are not training time
            t_last, steps_last = time.perf_counter(), self.step
        return t_last, steps_last, checked

    def _loop(self, stop: StopSignals) -> bool:
        """The steps; True if a signal stopped them before the last (every rank agrees on it after
        each step: all stop after the same one)."""
        tc = self.cfg.train
        if self.world.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        checked = self.step
        t_last, steps_last = time.perf_counter(), self.step
        with profiler(self.run_dir / "profile", self.profile_steps, self.step, self.world.rank, self.device) as prof:
            self.profile_trace = prof.trace_path
            while self.step < tc.steps:
                if self._interrupted:
                    stop.signum = stop.signum or signal.SIGINT
                if self.world.any(stop.signum is not None):
                    return True
                try:
                    t_last, steps_last, checked = self._step(prof, t_last, steps_last, checked)
                except KeyboardInterrupt:  # outside the main thread, where no signal handler records it
                    if self.world.distributed:  # the other ranks are inside this step's collectives
                        raise
                    stop.signum = stop.signum or signal.SIGINT
        return False  # complete: a signal during the last step's save changes nothing


def train(cfg: Config, run_dir: Path, callback=None) -> Trainer:
    """Train a new run into ``run_dir`` to the end."""
    trainer = Trainer.create(cfg, run_dir, callback)
    trainer.run()
    return trainer
