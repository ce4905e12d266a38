"""The machinery the GPU sessions of bench/gpu_session.py share (its module doc tells the story):
probe, fit and train to a deadline (``train_until``), run a stage without losing the summary
(``stage``), and cut model files into parts the device tool can fetch and put them back
(``split``, ``join``)."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from vmd import checkpoint, config as C
from vmd.runtime import history
from vmd.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "gpu_session.py"  # the Sudoku session starts its children with it
PART_BYTES = 15 * 2**20  # the device tool fetches files of at most 16 MiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_steps(cfg: C.Config, rate: float, seconds: float) -> C.Config:
    """``cfg`` trained for ``rate * seconds`` steps, its warm-ups shortened to fit (see the module doc)."""
    steps = max(10, int(rate * seconds))
    train = dataclasses.replace(cfg.train, steps=steps, warmup_steps=min(cfg.train.warmup_steps, steps // 10),
                                checkpoint_every=max(1, steps // 4), log_every=max(1, min(cfg.train.log_every, steps // 20)))
    latent = dataclasses.replace(cfg.latent, kl_warmup_steps=min(cfg.latent.kl_warmup_steps, steps // 5))
    return dataclasses.replace(cfg, train=train, latent=latent)


def probe_rate(cfg: C.Config, probe_steps: int) -> tuple[float, torch.device]:
    """Steps/s of ``cfg``'s training on its device, timed over ``probe_steps`` steps after 5 of
    warm-up (allocations, kernel choices) in a throw-away run; and that device."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Trainer(cfg, Path(tmp))
        for _ in range(5):
            probe.train_step()
        sync(probe.device)
        t0 = time.perf_counter()
        for _ in range(probe_steps):
            probe.train_step()
        sync(probe.device)
        rate = probe_steps / (time.perf_counter() - t0)
        device = probe.device
        del probe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rate, device


def probe_fitting(cfg: C.Config, probe_steps: int) -> tuple[C.Config, float, torch.device]:
    """``probe_rate`` at the preset's batch, halved on running out of GPU memory (to an eighth at
    most); the config at the batch that ran, its rate and device."""
    for _ in range(3):
        try:
            return (cfg, *probe_rate(cfg, probe_steps))
        except torch.OutOfMemoryError:
            pass
        gc.collect()
        torch.cuda.empty_cache()
        print(f"out of GPU memory at batch {cfg.train.batch_size}; trying {cfg.train.batch_size // 2}", flush=True)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=cfg.train.batch_size // 2))
    return (cfg, *probe_rate(cfg, probe_steps))


def logged_medians(run_dir: Path) -> dict:
    """Medians of tokens_per_s and matmul_share over the run's metrics.jsonl lines that have them
    (the first line left out where there are more: it holds the warm-up)."""
    rows = history.read(run_dir)
    rows = rows[1:] if len(rows) > 1 else rows
    return {k: statistics.median(r[k] for r in rows if k in r) for k in ("tokens_per_s", "matmul_share")
            if any(k in r for r in rows)}


def train_until(preset: str, overrides: list[str], run_dir: Path, deadline: float, probe_steps: int,
                save_once: bool = False) -> dict:
    """Train ``preset`` into ``run_dir`` so that it ends by ``deadline`` (time.time()); its throughput.
    ``save_once``: one checkpoint, at the end, and no validation, so the training seconds hold
    nothing else (the text session's tokens/s); else a checkpoint every quarter and the preset's
    validation, so a run cut short still leaves a model (the Sudoku session's)."""
    cfg = C.load(preset, overrides=overrides)
    asked = cfg.train.batch_size
    cfg, rate, device = probe_fitting(cfg, probe_steps)
    cfg = fit_steps(cfg, rate, deadline - time.time() - 15)  # 15 s: building the run, its last save
    if save_once:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every=cfg.train.steps,
                                                                  eval_every=0))

    def report(p) -> None:
        if p.step % max(1, p.total // 10) < cfg.train.log_every or p.step == p.total:
            print(f"{preset}: step {p.step}/{p.total} loss {p.metrics['loss']:.4f} kl {p.metrics['latent_kl']:.4f} "
                  f"{p.steps_per_s:.2f} steps/s", flush=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer.create(cfg, run_dir, report)
    tokens = cfg.train.batch_size * trainer.task.length  # the task's length: 81 for Sudoku, whatever task.length
    print(f"{preset}: {rate:.2f} steps/s ({rate * tokens:,.0f} tokens/s) in the probe on {device}; training "
          f"{cfg.train.steps} steps at batch {cfg.train.batch_size} (warm-up {cfg.train.warmup_steps}, "
          f"KL warm-up {cfg.latent.kl_warmup_steps})", flush=True)
    trainer.run()
    meta = checkpoint.read_meta(run_dir)
    seconds = float(meta["elapsed_s"])
    out = {"method": cfg.method, "run": str(run_dir), "parameters": meta.get("parameters"),
           "precision": cfg.device.precision, "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
           "length": trainer.task.length, "train_s": round(seconds, 2),
           "tokens_per_s": round(cfg.train.steps * tokens / max(seconds, 1e-9), 1),
           "probe_steps_per_s": round(rate, 3), "probe_tokens_per_s": round(rate * tokens, 1),
           "final_train_metrics": meta.get("train_metrics", {}), "logged": logged_medians(run_dir)}
    if cfg.train.batch_size != asked:
        out["batch_size_asked"] = asked
    if device.type == "cuda":
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def stage(s: dict, save: Callable[[dict], None], key: str, fn, *args):
    """``fn(*args)``, its failure recorded in ``s["errors"][key]`` (one line; the traceback on
    stderr), its seconds in ``s["seconds"][key]``, and ``save(s)`` either way: one stage failing
    must not lose what the others found. None where it failed."""
    t0 = time.perf_counter()
    print(f"-- {key}", flush=True)
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported in the summary, then the exit code
        traceback.print_exc()
        s["errors"][key] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        return None
    finally:
        s["seconds"][key] = round(time.perf_counter() - t0, 1)
        save(s)


def split(path: Path, out: Path) -> dict:
    """Write ``path`` under ``out`` as parts of at most PART_BYTES; their names and the whole file's SHA-256."""
    data = path.read_bytes()
    parts = []
    for i in range(0, max(1, len(data)), PART_BYTES):
        name = f"{path.stem}.part{i // PART_BYTES}"
        (out / name).write_bytes(data[i: i + PART_BYTES])
        parts.append(name)
    return {"file": path.name, "parts": parts, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def join(folder: Path) -> None:
    """Rebuild each split model file as a run directory FOLDER/PRESET (model.safetensors and the
    run's meta.json), ready for bench/bundle.py and bench/sudoku.py, and check it."""
    summary = json.loads((folder / "session.json").read_text())
    for entry in summary["files"]:
        data = b"".join((folder / part).read_bytes() for part in entry["parts"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise SystemExit(f"{entry['file']}: the parts do not add up to the file that was split (SHA-256 differs)")
        preset = Path(entry["file"]).stem
        run = folder / preset
        run.mkdir(exist_ok=True)
        (run / checkpoint.MODEL_FILE).write_bytes(data)
        (run / checkpoint.META_FILE).write_text(json.dumps(summary["runs"].get(preset, {}), indent=1))
        model, cfg, step = checkpoint.load_model(run)
        print(f"{run}: {cfg.method}, step {step}, {sum(p.numel() for p in model.parameters()):,} parameters")
