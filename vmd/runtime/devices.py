"""Where training runs and how fast: the device, mixed precision, the device's plain matmul rate
that a run's throughput is measured against, and the profiler of ``vmd train --profile``."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vmd.runtime.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def check_precision(device: torch.device, precision: str) -> None:
    """fp16 needs loss scaling, which is CUDA's; bf16 has fp32's range and runs anywhere."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"device.precision fp16 needs a CUDA GPU (its gradient scaler is CUDA's); on {device.type} "
                          "use bf16 or fp32")


def autocast(device: torch.device, precision: str):
    """Mixed precision as the preset says; fp32 is no autocast at all. Weights, optimiser moments
    and the losses stay fp32 (the model's log-softmax is taken on fp32 logits)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_RATES: dict[tuple[str, torch.dtype], float] = {}


def matmul_rate(device: torch.device, precision: str = "fp32") -> float:
    """FLOP/s of a plain square matmul on ``device`` in ``precision`` (the autocast dtype), measured
    once per process and kept: the yardstick of a run's ``matmul_share``."""
    dtype = DTYPES[precision]
    key = (str(device), dtype)
    if key not in _RATES:
        n = 1024 if device.type == "cpu" else 8192
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        reps = 0
        synchronize(device)
        t0 = time.perf_counter()
        while reps < 5 or time.perf_counter() - t0 < 0.2:
            a @ b
            reps += 1
            if reps % 5 == 0:
                synchronize(device)
        synchronize(device)
        _RATES[key] = 2 * n**3 * reps / (time.perf_counter() - t0)
        del a, b
        if device.type == "cuda":  # give the memory back: the run's batch was sized without it
            torch.cuda.empty_cache()
    return _RATES[key]


def forward_flops(fn) -> float:
    """The FLOPs torch counts (matmuls, attention) in ``fn()``, a forward pass. Run with gradients on
    (nothing calls backward): without them the CPU takes fused inference kernels that torch's
    counter does not see."""
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def profiler(out: Path, steps: int, step: int, rank: int, device: torch.device):
    """A torch profiler over ``steps`` training steps after two of warm-up (from step ``step`` + 3),
    writing a Chrome trace (chrome://tracing, Perfetto) and a table of the costliest ops into ``out``,
    one of each per rank. Call ``.step()`` after each training step; ``.trace_path`` is the trace's
    file. ``steps`` 0: does nothing."""
    if steps <= 0:
        return contextlib.nullcontext(_NoProfiler())
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    first = step + 3
    trace = out / f"steps{first}-{first + steps - 1}-rank{rank}.json"

    def write(prof) -> None:
        out.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        trace.with_suffix(".txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=30) + "\n")

    prof = profile(activities=activities, schedule=schedule(wait=0, warmup=2, active=steps, repeat=1),
                   on_trace_ready=write, record_shapes=True)
    prof.trace_path = trace  # where the trace goes, once its steps have run
    return prof


class _NoProfiler:
    trace_path = None

    def step(self) -> None:
        pass
