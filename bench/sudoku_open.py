"""MDM against VMD as Sudoku *generators*: open puzzles with many valid answers; writes
docs/results-sudoku-open.md.

    python bench/sudoku_open.py                                   # the bundled models
    python bench/sudoku_open.py --mdm RUN --vmd RUN --seeds 0,1,2
    python bench/sudoku_open.py --sets empty,two --puzzles 4 --samples 20 --nfe 5,20   # a quick look
    python bench/sudoku_open.py --mdm runs/gen/mdm-cont --vmd runs/gen/vmd-cont --section "continuous time"
    python bench/sudoku_open.py --write puzzles/ --puzzles 50     # the sets as files for vmd solve, no sampling

Each run writes (or replaces) its ``--section`` of the page and of the JSON beside it, keeping the
other sections and the hand-written reading from "## What it shows" on.

For each open set (vmd.sudoku.open: empty boards; puzzles with exactly 2 solutions; 10-100; at
least 1,000), each NFE and each model, ``--samples`` independent completions of each of the
set's first ``--puzzles`` puzzles, each from its own random stream (the sample's index and the
seed fix it; the MDM and the VMD get the same seeds), at ``--strategy`` and ``--temperature``
(default: random order, temperature 1, i.e. a sampler, not a solver), the VMD's z as its preset
draws it. Reported, mean over seeds (min-max):

- valid: the share of all samples that are complete valid grids keeping the givens;
- distinct: the number of different valid grids among one puzzle's samples, mean over puzzles;
- rarer (2-solution set): the share of the valid samples that found the puzzle's less frequent
  solution, pooled over its puzzles (0.5 is an even sampler; 0 one that always finds the same);
- p: the exact McNemar p-value of MDM against VMD on per-sample validity, seed 0 (the samples of
  one puzzle are not independent draws of the population of puzzles: read it as a guide).

Beside it, each model's bound on held-out complete grids (``--grids`` of them, drawn apart from
any training pool) in bits per cell: the k-step sampler's bound (vmd/steps.py) at each NFE, and
the continuous-time NELBO. Every grid equally likely would cost log2(6,670,903,752,021,072,936,960)
/ 81 = 0.895 bits per cell; the bound's excess over that is what a k-step sampler loses.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from _docs import made_by, write_sections
from vmd.checkpoint import load_model
from vmd.evaluate import likelihood
from vmd.models import bundled_path
from vmd.rng import sample_generators
from vmd.sudoku.evaluate import paired_difference
from vmd.sudoku.open import OPEN_SETS, describe, open_set, write_puzzles
from vmd.sudoku.data import solution_grids
from vmd.sudoku.solve import solve
from vmd.tasks.sudoku import to_tokens

ROOT = Path(__file__).resolve().parent.parent
NFES = "1,2,5,10,20,40,81"
TITLE = "Sudoku with many answers: MDM and VMD as generators"
HAND = "## What it shows"
HELD_OUT_SEED = 7  # held-out grids: training pools use seed 0
UNIFORM_BITS = math.log2(6_670_903_752_021_072_936_960) / 81  # every valid grid equally likely


def sample_many(model, cfg, puzzles: torch.Tensor, samples: int, *, nfe: int, strategy: str,
                temperature: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n * samples, 81) completions, puzzle by puzzle, and whether each is valid (keeping givens)."""
    rows = puzzles.repeat_interleave(samples, dim=0)
    r = solve(model, rows, nfe=nfe, strategy=strategy, temperature=temperature, seed=seed,
              z_policy=cfg.sample.z_policy, schedule=cfg.diffusion.schedule,
              streams=sample_generators(seed, rows.shape[0]))
    return r.grids, r.solved


def measures(grids: torch.Tensor, valid: torch.Tensor, n: int, samples: int) -> dict:
    """Valid share, distinct valid grids per puzzle, and the rarer of two solutions' share."""
    distinct, rarer, found = [], 0, 0
    for i in range(n):
        part = slice(i * samples, (i + 1) * samples)
        counts: dict[tuple, int] = {}
        for grid in grids[part][valid[part]].tolist():
            counts[tuple(grid)] = counts.get(tuple(grid), 0) + 1
        distinct.append(len(counts))
        top = sorted(counts.values(), reverse=True)
        rarer += top[1] if len(top) > 1 else 0
        found += sum(top)
    return {"valid": float(valid.float().mean()), "distinct": statistics.mean(distinct),
            "rarer": rarer / found if found else None}  # None: no valid sample to share out


def spread(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = fmt.format(statistics.mean(values))
    return mean if len(values) == 1 else f"{mean} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def write_sets(folder: Path, sets: list[str], n: int) -> None:
    """Each open set's first ``n`` puzzles as a file; files already there are left alone (refused)."""
    paths = {name: folder / f"open-{name}.txt" for name in sets}
    there = [str(p) for p in paths.values() if p.exists()]
    if there:
        raise SystemExit(f"error: {', '.join(there)} already exist(s); give another --write folder")
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        write_puzzles(open_set(name, n)[0], path)
        print(f"wrote {path}: {n} {describe(name)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mdm", default=None, help="MDM run or model file [bundled sudoku-mdm]")
    ap.add_argument("--vmd", default=None, help="VMD run or model file [bundled sudoku-vmd]")
    ap.add_argument("--sets", default=",".join(OPEN_SETS), help=f"open sets, of {', '.join(OPEN_SETS)}")
    ap.add_argument("--puzzles", type=int, default=10, help="puzzles per set [10]")
    ap.add_argument("--samples", type=int, default=100, help="completions per puzzle [100]")
    ap.add_argument("--nfe", default=NFES, help=f"denoiser steps [{NFES}]")
    ap.add_argument("--seeds", default="0", help="sampling seeds, comma-separated [0]")
    ap.add_argument("--strategy", default="random", help="random, top-prob or top-margin [random]")
    ap.add_argument("--temperature", type=float, default=1.0, help="value temperature; 0 is argmax [1]")
    ap.add_argument("--grids", type=int, default=256, help="held-out complete grids for the bounds [256]")
    ap.add_argument("--write", type=Path, default=None, metavar="DIR",
                    help="write each set's puzzles to DIR/open-SET.txt (the format vmd solve reads) and stop")
    ap.add_argument("--section", default="The bundled models", help="the page's section this run writes")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results-sudoku-open.md")
    args = ap.parse_args()
    sets = args.sets.split(",")
    try:
        nfes, seeds = [int(v) for v in args.nfe.split(",")], [int(v) for v in args.seeds.split(",")]
    except ValueError:
        ap.error("--nfe and --seeds take integers separated by commas")
    if not set(sets) <= set(OPEN_SETS) or min(nfes) < 1 or min(seeds) < 0 or args.puzzles < 1 or args.samples < 1:
        ap.error(f"--sets of {', '.join(OPEN_SETS)}; --nfe >= 1, --seeds >= 0, --puzzles and --samples >= 1")
    if args.write:
        write_sets(args.write, sets, args.puzzles)
        return
    models = {}
    for label, source, name in (("MDM", args.mdm, "sudoku-mdm"), ("VMD", args.vmd, "sudoku-vmd")):
        model, cfg, step = load_model(Path(source) if source else bundled_path(name))
        models[label] = (model.eval(), cfg, f"{source or 'bundled ' + name}, step {step}")
    rows, t0 = [], time.perf_counter()
    for name in sets:
        puzzles, counts = open_set(name, args.puzzles)
        for nfe in nfes:
            found = {label: [] for label in models}
            p = None
            for seed in seeds:
                valid = {}
                for label, (model, cfg, _) in models.items():
                    grids, valid[label] = sample_many(model, cfg, puzzles.long(), args.samples, nfe=nfe,
                                                      strategy=args.strategy, temperature=args.temperature, seed=seed)
                    found[label].append(measures(grids, valid[label], args.puzzles, args.samples))
                if p is None:
                    p = paired_difference(valid["MDM"], valid["VMD"])["p"]
            rows.append({"set": name, "nfe": nfe, "p": p, **{label: found[label] for label in models}})
            m, v = (statistics.mean(r["valid"] for r in found[k]) for k in ("MDM", "VMD"))
            print(f"{name} NFE {nfe}: valid MDM {100 * m:.1f}% VMD {100 * v:.1f}% ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    grids = to_tokens(solution_grids(args.grids, HELD_OUT_SEED))
    bounds = {label: {k: likelihood(model, grids, cfg, steps=min(k, 81), seed=0)["bits"] for k in [*nfes, 0]}
              for label, (model, cfg, _) in models.items()}
    lines = [made_by("bench/sudoku_open.py") + f" {date.today()}. {args.puzzles} puzzles per set, "
             f"{args.samples} completions each, strategy {args.strategy}, temperature {args.temperature}, seeds "
             f"{args.seeds}; mean over seeds (min-max). Column meanings: the module doc of bench/sudoku_open.py.", ""]
    lines += [f"- {label}: {desc}" for label, (_, _, desc) in models.items()]
    lines += ["- sets: " + "; ".join(f"`{s}` {describe(s)}" for s in sets), "",
              "| set | NFE | valid MDM | valid VMD | p | distinct MDM | distinct VMD | rarer MDM | rarer VMD |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = lambda k: spread([100 * x["valid"] for x in r[k]], "{:.1f}%")  # noqa: E731
        two = r["set"] == "two"
        lines.append(f"| {r['set']} | {r['nfe']} | {pct('MDM')} | {pct('VMD')} | {r['p']:.3g} | "
                     f"{spread([x['distinct'] for x in r['MDM']], '{:.1f}')} | "
                     f"{spread([x['distinct'] for x in r['VMD']], '{:.1f}')} | "
                     f"{spread([x['rarer'] for x in r['MDM']], '{:.2f}') if two else '-'} | "
                     f"{spread([x['rarer'] for x in r['VMD']], '{:.2f}') if two else '-'} |")
    lines += ["", f"Bound on {args.grids} held-out complete grids, bits per cell (uniform over all grids: "
              f"{UNIFORM_BITS:.3f}):", "",
              "| model | " + " | ".join(f"{k}-step" for k in nfes) + " | continuous |",
              "|---|" + "---|" * (len(nfes) + 1)]
    lines += [f"| {label} | " + " | ".join(f"{b[k]:.3f}" for k in [*nfes, 0]) + " |" for label, b in bounds.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    write_sections(args.out, TITLE, {args.section: text}, HAND)
    data = args.out.with_suffix(".json")
    old = json.loads(data.read_text()) if data.exists() else {}
    section = {"samples": rows, "bounds": bounds}
    data.write_text(json.dumps({**(old if isinstance(old, dict) else {}), args.section: section}, indent=1,
                               allow_nan=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
