"""MDM against VMD on generated Sudoku test sets; write docs/results-sudoku.md.

    python bench/sudoku.py                                  # the bundled models
    python bench/sudoku.py --mdm runs/sudoku-mdm-tiny --vmd runs/sudoku-vmd-tiny
    python bench/sudoku.py --easy 100 --hard 50 --very-hard 0   # a quicker look
    python bench/sudoku.py --mdm runs/gpu/sudoku-mdm --vmd runs/gpu/sudoku-vmd --device cuda

For each set (easy 30-36 givens, hard 22-26, very hard 17-21) and model: % solved at
NFE 1, 2, 3, 5, 10, 20, 50 with each strategy (argmax values); for the VMD also with posterior-
guided z and with z from the encoder given the solution (a bound on what z can add); --restarts 4
at NFE 2, 10 and 20; why top-margin solves fail at NFE 2, 3 and 5 (two cells filled in one step
that break a rule, or a cell that breaks one against an earlier cell); the batched solving speed
at NFE 10 with the FLOP/s it implies, beside a plain matrix product's FLOP/s measured beside each
solve (on a CPU only: the target is a CPU's).
Test sets are cached (vmd.sudoku.data).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from _docs import matmul_flops, write_keeping_hand
from vmd.runtime.allocator import keep_freed_memory
from vmd.checkpoint import load_model
from vmd.runtime.errors import ConfigError
from vmd.models import bundled_path
from vmd.sudoku.data import generated_set
from vmd.sudoku.evaluate import (DEFAULT_NFES, DEFAULT_STRATEGIES, accuracy_table, failure_kinds,
                                 known_solution_accuracy, paired_difference)
from vmd.sudoku.solve import default_batch_size, solve
from vmd.sudoku.solver import make_puzzle
from vmd.train import resolve_device

ROOT = Path(__file__).resolve().parent.parent
SETS = {"easy": (30, 36), "hard": (22, 26), "very hard": (17, 21)}
SPEED_BATCH = default_batch_size("cpu")  # what `vmd solve` uses on a CPU
TEST_SEED = 12345  # not the training pool's seed
FAILURE_NFES = (2, 3, 5)  # where steps are few and failures many
RESTART_NFES = (2, 10, 20)  # the target's NFE 2, and the step counts users solve hard puzzles with
HAND = "## Reading (written by hand"


def generation_rate(lo: int, hi: int, n: int) -> float:
    """Puzzles per second of the generator in one process (no cache)."""
    rng = random.Random(0)
    t0 = time.perf_counter()
    for _ in range(n):
        make_puzzle(rng, lo, hi)
    return n / (time.perf_counter() - t0)


def forward_flops(model, batch: int = 64) -> float:
    """FLOPs of one denoiser call per puzzle (z drawn from the prior included for a VMD). Counted
    with gradients on, so that the plain ops run: the counter does not see inside the fused oneDNN
    linear calls that inference without gradients uses on a CPU (vmd/model/transformer.py)."""
    x = torch.full((batch, 81), model.mask_id)
    with FlopCounterMode(display=False) as counter:
        model(x, model.sample_z(x))
    return counter.get_total_flops() / batch


def speed(models, puzzles, rounds: int = 5, nfe: int = 10, batch_size: int = SPEED_BATCH) -> tuple[dict, float]:
    """Puzzles/s of batched solving and the share of a plain matmul's FLOP/s that it implies.

    The machine's speed drifts (shared host), so each solve is paired with a matmul measured
    just before it, the models take turns, and each figure is the median over ``rounds``.
    Returns ({name: (puzzles/s, model FLOP/s, share, (lowest, highest share))}, median matmul FLOP/s)."""
    per_puzzle = {name: forward_flops(model) * nfe for name, (model, _, _) in models.items()}
    for model, _, _ in models.values():
        solve(model, puzzles[:2 * batch_size], nfe=2, batch_size=batch_size)  # warm-up, batches side by side too
    rates: dict = {name: [] for name in models}
    shares: dict = {name: [] for name in models}
    mms = []
    for _ in range(rounds):
        for name, (model, cfg, _) in models.items():
            mms.append(matmul_flops(reps=10))
            t0 = time.perf_counter()
            solve(model, puzzles, nfe=nfe, strategy="top-margin", batch_size=batch_size, z_policy=cfg.sample.z_policy)
            rates[name].append(puzzles.shape[0] / (time.perf_counter() - t0))
            shares[name].append(rates[name][-1] * per_puzzle[name] / mms[-1])
    med = statistics.median
    return {name: (med(rates[name]), med(rates[name]) * per_puzzle[name], med(shares[name]),
                   (min(shares[name]), max(shares[name]))) for name in models}, med(mms)


def fmt_row(name, acc, nfes):
    return f"| {name} | " + " | ".join(f"{100 * acc[k]:.1f}" if k in acc else "-" for k in nfes) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mdm", default=None, help="MDM run directory [default: the bundled sudoku-mdm]")
    ap.add_argument("--vmd", default=None, help="VMD run directory [default: the bundled sudoku-vmd]")
    ap.add_argument("--easy", type=int, default=500)
    ap.add_argument("--hard", type=int, default=200)
    ap.add_argument("--very-hard", type=int, default=50)
    ap.add_argument("--nfe", default=",".join(map(str, DEFAULT_NFES)))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results-sudoku.md"))
    ap.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto; the speed section runs on a CPU only")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
    except (ConfigError, RuntimeError) as e:
        ap.error(f"--device {args.device}: {e}")
    nfes = [int(v) for v in args.nfe.split(",")]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sources = {"MDM": args.mdm or bundled_path("sudoku-mdm"), "VMD": args.vmd or bundled_path("sudoku-vmd")}
    models = {name: load_model(src, device) for name, src in sources.items()}
    counts = {"easy": args.easy, "hard": args.hard, "very hard": args.very_hard}
    results: dict = {}
    for set_name, (lo, hi) in SETS.items():
        n = counts[set_name]
        if not n:
            continue
        solved: dict = {}
        t0 = time.perf_counter()
        puzzles, solutions = generated_set(n, lo, hi, seed=TEST_SEED)
        print(f"{set_name}: {n} puzzles, {lo}-{hi} givens (ready in {time.perf_counter() - t0:.0f} s)", flush=True)
        for name, (model, cfg, _) in models.items():
            t0 = time.perf_counter()
            # one batch of up to 256 per set, as in every earlier run: the same draws, so tables compare
            table = accuracy_table(model, puzzles, nfes=nfes, strategies=DEFAULT_STRATEGIES, batch_size=256,
                                   z_policy=cfg.sample.z_policy, schedule=cfg.diffusion.schedule, device=device,
                                   per_puzzle=True)
            results[(set_name, name)] = table["accuracy"]
            solved[name] = table["solved"]
            print(f"  {name}: top-margin " + " ".join(f"{k}:{100 * table['accuracy']['top-margin'][k]:.1f}" for k in nfes)
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            if model.has_latent:  # posterior-guided z (method.md §5), top-margin only
                table = accuracy_table(model, puzzles, nfes=nfes, strategies=("top-margin",), z_policy="posterior",
                                       batch_size=256, schedule=cfg.diffusion.schedule, device=device)
                results[(set_name, name, "posterior")] = table["accuracy"]["top-margin"]
                results[(set_name, name, "known")] = {  # z from the encoder given the answer: a bound
                    nfe: known_solution_accuracy(model, puzzles, solutions, nfe=nfe, schedule=cfg.diffusion.schedule,
                                                 batch_size=256, device=device) for nfe in nfes}
        results[(set_name, "paired")] = {  # VMD against MDM on the same puzzles
            strategy: {nfe: paired_difference(solved["VMD"][strategy][nfe], solved["MDM"][strategy][nfe]) for nfe in nfes}
            for strategy in DEFAULT_STRATEGIES}
        for name, (model, cfg, _) in models.items():
            results[(set_name, name, "restarts")] = {
                nfe: float(solve(model, puzzles, nfe=nfe, restarts=4, z_policy=cfg.sample.z_policy,
                                 schedule=cfg.diffusion.schedule, device=device).solved.double().mean())
                for nfe in RESTART_NFES if nfe in nfes}
            results[(set_name, name, "failures")] = {  # same solves as the table's top-margin row
                nfe: failure_kinds(model, puzzles, nfe=nfe, z_policy=cfg.sample.z_policy,
                                   schedule=cfg.diffusion.schedule, batch_size=256, device=device)
                for nfe in FAILURE_NFES if nfe in nfes}
    on_cpu = device.type == "cpu"
    easy, _ = generated_set(max(args.easy, 256), *SETS["easy"], seed=TEST_SEED) if args.easy and on_cpu else (None, None)
    perf, mm = speed(models, easy[:256]) if easy is not None else ({}, None)  # mm is written beside perf only
    gen = {name: generation_rate(*SETS[name], n) for name, n in (("easy", 200), ("hard", 40))}
    write(args, sources, models, nfes, results, perf, mm, gen, device)


def paired_section(results, nfes) -> list[str]:
    """VMD against MDM puzzle by puzzle: the discordant puzzles of every cell and their exact McNemar p."""
    cells = [(set_name, strategy, nfe, results[(set_name, "paired")][strategy][nfe])
             for set_name in SETS if (set_name, "paired") in results for strategy in DEFAULT_STRATEGIES for nfe in nfes]
    if not cells:
        return []
    low = [c for c in cells if c[3]["p"] < 0.05]
    lines = ["", "## VMD against MDM, puzzle by puzzle", "",
             "Both models solve the same puzzles, so a gap between them rests on the puzzles only one of them solved. "
             "Each cell: puzzles only the VMD solved / only the MDM solved (p), p from the exact two-sided McNemar "
             "test: the chance of a split at least this uneven between two equally good solvers. "
             f"{len(low)} of the {len(cells)} cells have p < 0.05, where about {len(cells) / 20:.0f} would by chance "
             "alone" + (": " + ", ".join(f"{s} {st} NFE {n} ({r['only_a']} / {r['only_b']})" for s, st, n, r in low)
                        if low else "") + ".", "",
             "| set, strategy | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for set_name in SETS:
        for strategy in DEFAULT_STRATEGIES:
            row = [r for s, st, _, r in cells if (s, st) == (set_name, strategy)]
            if row:
                lines.append(f"| {set_name}, {strategy} | " + " | ".join(
                    f"{r['only_a']} / {r['only_b']} ({r['p']:.2f})" for r in row) + " |")
    return lines


def write(args, sources, models, nfes, results, perf, mm, gen, device) -> None:
    cmd = "python bench/sudoku.py " + " ".join(sys.argv[1:])
    where = (f"{platform.machine()} CPU, {torch.get_num_threads()} threads" if device.type == "cpu" else
             f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type} (fp32 inference)")
    lines = ["# Sudoku: MDM against VMD", "",
             f"Made by `{cmd.strip()}` on {date.today()}, {where}, "
             f"torch {torch.__version__}. Test puzzles generated by `vmd.sudoku` (unique solutions, seed {TEST_SEED}); "
             "values by argmax; z policy as each model's preset says. % of puzzles solved (complete, valid, givens kept).", ""]
    for name, src in sources.items():
        model, cfg, step = models[name]
        params = sum(p.numel() for p in model.parameters())
        lines.append(f"- {name}: `{src if isinstance(src, str) else 'bundled ' + Path(src).stem}`, step {step}, "
                     f"{params:,} parameters")
    for set_name, (lo, hi) in SETS.items():
        if (set_name, "MDM") not in results:
            continue
        lines += ["", f"## {set_name.capitalize()} puzzles ({lo}-{hi} givens)", "",
                  "| model, strategy | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                  "|---|" + "---|" * len(nfes)]
        for strategy in DEFAULT_STRATEGIES:
            for name in models:
                lines.append(fmt_row(f"{name} {strategy}", results[(set_name, name)][strategy], nfes))
        for name in models:
            if (set_name, name, "posterior") in results:
                lines.append(fmt_row(f"{name} top-margin, posterior-guided z", results[(set_name, name, "posterior")], nfes))
            if results.get((set_name, name, "restarts")):
                lines.append(fmt_row(f"{name} top-margin, `--restarts 4` (fresh z, perturbed fill order)",
                                     results[(set_name, name, "restarts")], nfes))
            if (set_name, name, "known") in results:
                lines.append(fmt_row(f"{name} top-margin, z given the solution (a bound, not a solver)",
                                     results[(set_name, name, "known")], nfes))
    lines += paired_section(results, nfes)
    lines += ["", "## Why solves fail (top-margin, argmax)", "",
              "A failed grid has two cells with the same digit in a row, column or box. *Same step*: every such "
              "pair was filled in one step, the inconsistency that a latent shared by one step's cells is meant to "
              "prevent; *across steps*: some cell contradicts a given or a cell filled in an earlier step. "
              "Puzzles failed, of the sets above (`vmd.sudoku.evaluate.failure_kinds`).", "",
              "| set | NFE | " + " | ".join(f"{name} failed | same step | across steps" for name in models) + " |",
              "|---|---|" + "---|---|---|" * len(models)]
    for set_name in SETS:
        for nfe in FAILURE_NFES:
            kinds = [results.get((set_name, name, "failures"), {}).get(nfe) for name in models]
            if all(kinds):
                lines.append(f"| {set_name} | {nfe} | " + " | ".join(
                    f"{k['failed']} | {k['same_step']} | {k['across_steps']}" for k in kinds) + " |")
    if perf:
        lines += ["", f"## Solving speed (NFE 10, top-margin, batches of {SPEED_BATCH} as `vmd solve` uses on a CPU, "
                  f"{min(torch.get_num_threads(), 256 // SPEED_BATCH)} side by side, one per torch thread, 256 easy puzzles)", "",
                  "| model | puzzles/s | GFLOP/s | share of a plain 1024x1024 matmul | lowest-highest round |",
                  "|---|---|---|---|---|"]
        for name, (rate, flops, share, (lo, hi)) in perf.items():
            lines.append(f"| {name} | {rate:.1f} | {flops / 1e9:.1f} | {100 * share:.0f}% | {100 * lo:.0f}-{100 * hi:.0f}% |")
        lines += ["", f"Plain fp32 matmul in the same run: {mm / 1e9:.1f} GFLOP/s (median). Model FLOPs counted by "
                  "`torch.utils.flop_counter` for one denoiser call, times 10 calls per puzzle. Each figure is the "
                  "median of 5 rounds in which the models take turns; the share pairs each solve with a matmul "
                  "measured just before it, as the machine's speed drifts."]
    lines += ["", "## Puzzle generator", "", "One process, no cache: " + ", ".join(
        f"{name} ({SETS[name][0]}-{SETS[name][1]} givens) {rate:.1f} puzzles/s" for name, rate in gen.items())
        + f"; 10,000 easy puzzles take about {10000 / gen['easy'] / 60:.1f} min in one process "
        "(`generated_set` spreads chunks over the CPU cores)."]
    write_keeping_hand(Path(args.out), "\n".join(lines) + "\n", HAND)
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(
        {"|".join(k): v for k, v in results.items()}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    keep_freed_memory()  # as the `vmd` command does (vmd/runtime/allocator.py): its timings are what users get
    main()
