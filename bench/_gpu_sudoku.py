"""`gpu_session.py sudoku`: train the GPU Sudoku presets side by side within a time budget, score
them, and leave what comes back small enough to fetch.

    VMD_CACHE_DIR=.device-cache python bench/gpu_session.py fill-cache        # here, beforehand
    VMD_CACHE_DIR=.device-cache python bench/gpu_session.py sudoku --minutes 5 --out "$OUT"
    python bench/gpu_session.py join DIR     # here, on a copy of what came back: the runs

Each preset trains for as many steps as the budget allows rather than its own 50,000
(_gpu_common.train_until, see gpu_session.py's module doc). Both start at once, each in a child process
(`gpu_session.py sudoku --child PRESET --deadline T`, with half the CPU threads), so each times
its probe while the other runs too and its step count fits the GPU as shared; these 6M and 11M
parameter models leave room for two on one GPU (the text presets do not: bench/_gpu_text.py).
Each child saves a checkpoint every quarter of its steps and writes RUN/session.json: the run's
meta.json, its probe rate and throughput, the preset and overrides. Then bench/sudoku.py scores
both on the GPU, and the models are written under --out with fp16 weights, each file split in
parts below the fetch limit (16 MiB); `join DIR` puts them back together, checks their SHA-256
and makes each a run directory (weights and meta.json) that bench/bundle.py and bench/sudoku.py
take. OUT/session.json holds the children's exit codes, the GPU, each run's session.json, the
scoring's exit code, the split files, and per stage its seconds and any error; it is rewritten
after each stage. Fill the puzzle cache beforehand where you can (`fill-cache`, a few minutes on
two cores) and carry that folder: the GPU machine's cores would otherwise spend the budget on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

import _gpu_common as common  # the shared machinery
from sudoku import SETS, TEST_SEED  # bench/sudoku.py: its test sets
from vmd import checkpoint, config as C
from vmd.runtime.errors import ConfigError
from vmd.sudoku.data import generated_set
from vmd.tasks import make_task

ROOT = common.ROOT


def add_cache_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--presets", default="sudoku-mdm,sudoku-vmd",
                    help="an MDM and a VMD Sudoku preset, in that order [sudoku-mdm,sudoku-vmd]")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="override for both, e.g. train.batch_size=512 or task.grids=2000")
    ap.add_argument("--eval", default="200,100,50", help="easy, hard, very hard test puzzles for bench/sudoku.py "
                                                         "[200,100,50]")


def add_session_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--minutes", type=float, default=5.0, help="training time, both presets at once [5]")
    ap.add_argument("--out", type=Path, help="where the results and the models go (the device tool's $OUT)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "gpu", help="run directories go under RUNS/DATE-TIME, a new folder each session [runs/gpu]")
    add_cache_arguments(ap)
    ap.add_argument("--probe-steps", type=int, default=30, help="steps timed in each probe [30]")
    ap.add_argument("--device", default="auto", help="where bench/sudoku.py scores the models [auto]")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)


def checked(args: argparse.Namespace, ap: argparse.ArgumentParser) -> tuple[list[str], list[int]]:
    """The presets and the test-set counts, or a one-line usage error (exit 2) before anything runs."""
    presets = args.presets.split(",")
    if len(presets) != 2 or not all(p in C.list_presets() for p in presets):
        ap.error(f"--presets takes an MDM and a VMD preset, comma-separated; got {args.presets!r}")
    try:
        counts = [int(n) for n in args.eval.split(",")]
    except ValueError:
        counts = []
    if len(counts) != 3 or min(counts) < 0:
        ap.error(f"--eval takes three counts EASY,HARD,VERY_HARD such as 200,100,50; got {args.eval!r}")
    for preset, method in zip(presets, ("mdm", "vmd")):  # bad --set: one line here, not a traceback per child
        try:
            cfg = C.load(preset, overrides=args.overrides)
        except ConfigError as e:
            ap.error(str(e))
        if cfg.task.name != "sudoku" or cfg.method != method:
            ap.error(f"--presets takes an MDM and a VMD Sudoku preset, in that order; {preset} is "
                     f"{cfg.method} on {cfg.task.name}")
    return presets, counts


def fill_cache(presets: list[str], overrides: list[str], counts: list[int]) -> None:
    """Generate (or find cached) the presets' training pools and bench/sudoku.py's test sets in
    the data cache (VMD_CACHE_DIR). Run here before a device session, with the folder carried:
    the GPU pool (20,000 puzzles) takes minutes of CPU that a lent GPU's budget cannot spare.
    `sudoku` runs it too, and finds them cached."""
    t0 = time.perf_counter()
    for preset in presets:
        make_task(C.load(preset, overrides=overrides).task).prepare()  # the task's own pool, whatever its source
    for n, (lo, hi) in zip(counts, SETS.values()):
        if n:
            generated_set(n, lo, hi, seed=TEST_SEED)
    print(f"puzzle pools and test sets ready ({time.perf_counter() - t0:.0f} s)", flush=True)


def run_fill_cache(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    presets, counts = checked(args, ap)
    fill_cache(presets, args.overrides, counts)


def child(preset: str, overrides: list[str], run_dir: Path, deadline: float, probe_steps: int) -> None:
    """Train ``preset`` into ``run_dir`` by ``deadline``; RUN/session.json for the parent's summary."""
    r = common.train_until(preset, overrides, run_dir, deadline, probe_steps)
    meta = checkpoint.read_meta(run_dir)
    meta.update(probe_steps_per_s=r["probe_steps_per_s"], preset=preset, overrides=overrides,
                throughput={k: v for k, v in r.items() if k not in ("run", "final_train_metrics", "probe_steps_per_s")})
    (run_dir / "session.json").write_text(json.dumps(meta, indent=1))


def score(runs: list[Path], counts: list[int], device: str, out: Path) -> int:
    """bench/sudoku.py on the two runs (MDM, VMD), its table to OUT/results-sudoku.md; its exit code."""
    easy, hard, very_hard = map(str, counts)
    bench = [sys.executable, str(ROOT / "bench" / "sudoku.py"), "--mdm", str(runs[0]), "--vmd", str(runs[1]),
             "--easy", easy, "--hard", hard, "--very-hard", very_hard, "--device", device,
             "--out", str(out / "results-sudoku.md")]
    return subprocess.call(bench, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def export(run: Path, half: Path, out: Path) -> dict:
    """The run's model as fp16 weights at ``half``, split under ``out``; the parts' entry."""
    checkpoint.export_model(run, half, half=True)
    return common.split(half, out)


def run_session(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    if args.child:
        return child(args.child, args.overrides, args.runs / args.child, args.deadline, args.probe_steps)
    presets, counts = checked(args, ap)
    if args.minutes <= 0 or args.probe_steps < 1:
        ap.error("--minutes must be > 0 and --probe-steps >= 1")
    if args.out is None:
        ap.error("--out is required (the device tool's $OUT)")
    fill_cache(presets, args.overrides, counts)
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs = args.runs / datetime.now().strftime("%Y%m%d-%H%M%S")  # a rerun on the same machine starts afresh
    deadline = time.time() + 60 * args.minutes
    threads = str(max(1, (os.cpu_count() or 1) // len(presets)))  # the CPU's share of each: data, launches
    procs = [subprocess.Popen([sys.executable, str(common.SCRIPT), "sudoku", "--child", preset,
                               "--deadline", str(deadline), "--runs", str(args.runs),
                               "--probe-steps", str(args.probe_steps)] + [f"--set={o}" for o in args.overrides],
                              env={**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"})
             for preset in presets]
    codes = [p.wait() for p in procs]
    runs = [args.runs / preset for preset in presets]
    s = {"presets": presets, "overrides": args.overrides, "minutes": args.minutes, "exit_codes": codes,
         "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
         "runs": {p: json.loads((r / "session.json").read_text()) for p, r in zip(presets, runs)
                  if (r / "session.json").exists()}, "files": [], "seconds": {}, "errors": {}}

    def save(s: dict) -> None:
        (args.out / "session.json").write_text(json.dumps(s, indent=1))

    save(s)
    if all(c == 0 for c in codes):
        s["bench_exit_code"] = common.stage(s, save, "scoring", score, runs, counts, args.device, args.out)
        for preset, run in zip(presets, runs):  # one failing must not lose the other, nor the summary
            entry = common.stage(s, save, f"{preset} export", export, run,
                                      args.runs / f"{preset}.safetensors", args.out)
            if entry is not None:
                s["files"].append(entry)
        save(s)
    print(json.dumps({k: s[k] for k in ("exit_codes", "gpu", "errors")}), flush=True)
    if any(codes) or s["errors"] or s.get("bench_exit_code"):
        raise SystemExit(1)
