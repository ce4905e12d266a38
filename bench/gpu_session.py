"""One prepared run for a lent GPU: train the GPU Sudoku presets side by side within a time
budget, score them, and leave what comes back small enough to fetch.

    VMD_CACHE_DIR=.device-cache python bench/gpu_session.py --minutes 5 --out "$OUT"
    python bench/gpu_session.py --join DIR              # here, on a copy of what came back: the runs

A lent GPU comes with minutes, not hours (docs/bundled-models.md), so each preset trains for as
many steps as the budget allows rather than its own 50,000: both start at once, each times a
short probe of its own steps while the other runs too, then trains a fresh run whose step count
(and so its cosine schedule) ends on time. Warm-ups longer than a tenth (learning rate) or a
fifth (KL weight) of that count are shortened to it; everything else is the preset's. Then
bench/sudoku.py scores both on the GPU, and the models are written under --out with fp16
weights, each file split in parts below the fetch limit (16 MiB); --join puts them back
together, checks their SHA-256 and makes each a run directory (weights and meta.json) that
bench/bundle.py and bench/sudoku.py take. Fill the puzzle cache beforehand where you can
(`VMD_CACHE_DIR=.device-cache python bench/gpu_session.py --fill-cache`, a few minutes on two
cores) and carry that folder: the GPU machine's cores would otherwise spend the budget on it.
The text presets' session is bench/gpu_text.py (docs/gpu-session.md), which imports this one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sudoku import SETS, TEST_SEED  # bench/sudoku.py: its test sets
from vmd import checkpoint, config as C
from vmd.runtime.errors import ConfigError
from vmd.sudoku.data import generated_set
from vmd.tasks import make_task
from vmd.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
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


def child(preset: str, overrides: list[str], run_dir: Path, deadline: float, probe_steps: int) -> None:
    """Train ``preset`` into ``run_dir`` so that it ends by ``deadline`` (time.time())."""
    cfg = C.load(preset, overrides=overrides)
    rate, device = probe_rate(cfg, probe_steps)
    cfg = fit_steps(cfg, rate, deadline - time.time() - 15)  # 15 s for building the run and its last save
    print(f"{preset}: {rate:.1f} steps/s in the probe on {device}; training {cfg.train.steps} steps "
          f"(warm-up {cfg.train.warmup_steps}, KL warm-up {cfg.latent.kl_warmup_steps})", flush=True)

    def report(p) -> None:
        if p.step % max(1, p.total // 10) < cfg.train.log_every or p.step == p.total:
            print(f"{preset}: step {p.step}/{p.total} loss {p.metrics['loss']:.4f} kl {p.metrics['latent_kl']:.4f} "
                  f"{p.steps_per_s:.1f} steps/s", flush=True)

    Trainer.create(cfg, run_dir, report).run()
    meta = checkpoint.read_meta(run_dir)
    meta.update(probe_steps_per_s=round(rate, 2), preset=preset, overrides=overrides)
    (run_dir / "session.json").write_text(json.dumps(meta, indent=1))


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


def fill_cache(presets: list[str], counts: list[int]) -> None:
    """Generate (or find cached) the presets' training pools and the bench's test sets."""
    t0 = time.perf_counter()
    for preset in presets:
        make_task(C.load(preset).task).prepare()  # the task's own pool, whatever its source
    for n, (lo, hi) in zip(counts, SETS.values()):
        if n:
            generated_set(n, lo, hi, seed=TEST_SEED)
    print(f"puzzle pools and test sets ready ({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="training time, both presets at once [5]")
    ap.add_argument("--out", type=Path, help="where the results and the models go (the device tool's $OUT)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "gpu", help="run directories [runs/gpu]")
    ap.add_argument("--presets", default="sudoku-mdm,sudoku-vmd", help="an MDM and a VMD preset, in that order")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override for both, e.g. train.batch_size=512")
    ap.add_argument("--probe-steps", type=int, default=30)
    ap.add_argument("--eval", default="200,100,50", help="easy, hard, very hard test puzzles for bench/sudoku.py")
    ap.add_argument("--device", default="auto", help="where bench/sudoku.py scores the models [auto]")
    ap.add_argument("--join", type=Path, metavar="DIR", help="rebuild the split model files in DIR, then stop")
    ap.add_argument("--fill-cache", action="store_true", help="generate the training pools and test sets, then stop")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    presets = args.presets.split(",")
    if args.join:
        if not (args.join / "session.json").is_file():
            ap.error(f"--join {args.join}: no session.json there (give the folder the device run's files came back to)")
        return join(args.join)
    if args.child:
        return child(args.child, args.overrides, args.runs / args.child, args.deadline, args.probe_steps)
    if len(presets) != 2 or not all(p in C.list_presets() for p in presets):
        ap.error(f"--presets takes an MDM and a VMD preset, comma-separated; got {args.presets!r}")
    try:
        counts = [int(n) for n in args.eval.split(",")]
    except ValueError:
        counts = []
    if len(counts) != 3 or min(counts) < 0:
        ap.error(f"--eval takes three counts EASY,HARD,VERY_HARD such as 200,100,50; got {args.eval!r}")
    if args.minutes <= 0 or args.probe_steps < 1:
        ap.error("--minutes must be > 0 and --probe-steps >= 1")
    if args.out is None and not args.fill_cache:
        ap.error("--out is required (the device tool's $OUT)")
    for preset in presets:  # bad --set overrides: one line here, not a traceback from each child
        try:
            C.load(preset, overrides=args.overrides)
        except ConfigError as e:
            ap.error(str(e))
    fill_cache(presets, counts)
    if args.fill_cache:
        return None
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + 60 * args.minutes
    threads = str(max(1, (os.cpu_count() or 1) // len(presets)))  # the CPU's share of each: data, launches
    procs = [subprocess.Popen([sys.executable, __file__, "--child", preset, "--deadline", str(deadline), "--runs",
                               str(args.runs), "--probe-steps", str(args.probe_steps)]
                              + [f"--set={o}" for o in args.overrides],
                              env={**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"})
             for preset in presets]
    codes = [p.wait() for p in procs]
    runs = [args.runs / preset for preset in presets]
    summary = {"presets": presets, "overrides": args.overrides, "minutes": args.minutes, "exit_codes": codes,
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "runs": {p: json.loads((r / "session.json").read_text()) for p, r in zip(presets, runs)
                        if (r / "session.json").exists()}, "files": []}
    if all(c == 0 for c in codes):
        easy, hard, very_hard = map(str, counts)
        bench = [sys.executable, str(ROOT / "bench" / "sudoku.py"), "--mdm", str(runs[0]), "--vmd", str(runs[1]),
                 "--easy", easy, "--hard", hard, "--very-hard", very_hard, "--device", args.device,
                 "--out", str(args.out / "results-sudoku.md")]
        summary["bench_exit_code"] = subprocess.call(bench, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for preset, run in zip(presets, runs):  # a failure here must not lose the summary
            try:
                half = args.runs / f"{preset}.safetensors"
                checkpoint.export_model(run, half, half=True)
                summary["files"].append(split(half, args.out))
            except Exception as e:  # noqa: BLE001 - reported in session.json, then the exit code
                summary.setdefault("export_errors", {})[preset] = f"{type(e).__name__}: {e}"
    (args.out / "session.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("exit_codes", "gpu")}), flush=True)
    if any(codes) or summary.get("export_errors") or summary.get("bench_exit_code"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
