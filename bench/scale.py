"""Scaling out on this CPU: data-parallel steps/s under torchrun (gloo), and bf16 against fp32.

    python bench/scale.py --ddp                # 1 process of 1 thread against 2 of 1 thread, same global batch
    python bench/scale.py --bf16               # synthetic presets at 3 seeds in fp32 and bf16; shakespeare bf16

--ddp trains each preset for --steps steps as one process and as two (torchrun --standalone,
OMP_NUM_THREADS=1 each), the two taking turns in each of --rounds rounds (the host drifts),
and reads steps/s, tokens/s and the matmul share from each run's metrics.jsonl (the windows
after the first, which holds the warm-up). --bf16 trains the synthetic presets (runs in
runs/bench-scale, reused when finished) and scores them as bench/synthetic.py does; for text it
scores runs/bench-scale/shakespeare-bd3-block4-bf16-s0 (train it with the command in the table)
beside the fp32 bench runs of runs/bench-text. Writes sections of docs/results-distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _docs import made_by, write_sections
from synthetic import score, train_or_reuse
from text import score_bpc
from vmd import checkpoint, config as C

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results-distributed.md"
TITLE = "Results: data parallel training and bf16 on the CPU"
HAND = "## Reading (written by hand"
SYNTHETIC = ("synthetic-2tok-mdm", "synthetic-2tok-vmd")
TEXT_BF16 = ROOT / "runs" / "bench-scale" / "shakespeare-bd3-block4-bf16-s0"


def timed_run(preset: str, procs: int, steps: int, log_every: int) -> dict:
    """steps/s (median over the windows after the first), tokens/s and matmul share of a fresh run."""
    with tempfile.TemporaryDirectory() as tmp:
        launch = [sys.executable, "-m", "vmd_cli"] if procs == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m", "vmd_cli"]
        sets = ["device.device=cpu", f"train.steps={steps}", f"train.log_every={log_every}", "train.eval_every=0",
                f"train.checkpoint_every={steps}"]
        cmd = [*launch, "train", "--preset", preset, *[a for s in sets for a in ("--set", s)], "--out", f"{tmp}/run"]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if r.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
        rows = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()][1:]
    return {k: statistics.median(row[k] for row in rows) for k in ("steps_per_s", "tokens_per_s", "matmul_share")}


def ddp_section(args) -> dict[str, str]:
    rows = ["| preset | global batch | 1 process x 1 thread, steps/s | 2 processes x 1 thread, steps/s | speed-up | "
            "tokens/s (2 processes) | matmul share (2 processes) |", "|---|---|---|---|---|---|---|"]
    for preset in args.presets.split(","):
        runs = {1: [], 2: []}
        for r in range(args.rounds):
            for procs in ((1, 2) if r % 2 == 0 else (2, 1)):
                runs[procs].append(timed_run(preset, procs, args.steps, args.log_every))
                print(f"  {preset} round {r}: {procs} process(es) {runs[procs][-1]['steps_per_s']:.2f} steps/s", flush=True)
        one, two = ({k: statistics.median(x[k] for x in runs[p]) for k in runs[p][0]} for p in (1, 2))
        batch = C.load(preset).train.batch_size
        rows.append(f"| {preset} | {batch} | {one['steps_per_s']:.2f} | {two['steps_per_s']:.2f} | "
                    f"**{two['steps_per_s'] / one['steps_per_s']:.2f}x** | {two['tokens_per_s']:,.0f} | "
                    f"{100 * two['matmul_share']:.0f}% |")
    text = (f"{made_by('bench/scale.py')} Each run: {args.steps} steps from scratch, logged every {args.log_every}; "
            f"steps/s is the median over the windows after the first, then over {args.rounds} rounds in which the "
            "two take turns. Two processes: `torchrun --standalone --nproc_per_node 2`, gloo, each drawing half "
            "the global batch, OMP_NUM_THREADS=1 for both cases. Target: 2 processes at least 1.6x one.\n\n"
            + "\n".join(rows))
    return {"Data parallel on the CPU: steps/s": text}


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def bf16_sections(args) -> dict[str, str]:
    seeds = [0, 1, 2]
    rows = ["| preset | metric | fp32, mean (range) over seeds 0-2 | bf16, mean (range) | difference | "
            "within the seed spread |", "|---|---|---|---|---|---|"]
    for preset in SYNTHETIC:
        got = {}
        for precision in ("fp32", "bf16"):
            for seed in seeds:
                cfg = C.load(preset, None, ["device.device=cpu", f"train.seed={seed}", f"device.precision={precision}"])
                run = ROOT / "runs" / "bench-scale" / f"{preset}-{precision}-s{seed}"
                train_or_reuse(cfg, run)
                m = score(run, cfg.sample, [1], args.samples)[1]
                for k in ("accuracy", "kl"):
                    got.setdefault((precision, k), []).append(m[k])
                print(f"  {preset} {precision} seed {seed}: accuracy {m['accuracy']:.4f} kl {m['kl']:.4f}", flush=True)
        for k in ("accuracy", "kl"):
            a, b = got[("fp32", k)], got[("bf16", k)]
            diff = statistics.mean(b) - statistics.mean(a)
            width = max(max(a) - min(a), max(b) - min(b))
            rows.append(f"| {preset} | {k} at NFE 1 | {spread(a)} | {spread(b)} | {diff:+.4f} | "
                        f"{'yes' if abs(diff) <= width else 'no'} |")
    text = [f"{made_by('bench/scale.py')} Each preset trained as it is (its steps, batch, schedule) at seeds 0-2 "
            f"in fp32 and in bf16 (`--set device.precision=bf16`: autocast on the CPU), scored at NFE 1 with the "
            f"preset's sampler on {args.samples:,} samples. Within the spread: |difference of the means| at most "
            "the wider of the two seed ranges.", "", *rows]
    bf16 = _text_bpc(TEXT_BF16)
    fp32 = [r for s in seeds if (r := _text_bpc(ROOT / "runs" / "bench-text" / f"shakespeare-bd3-block4-s{s}"))]
    if bf16 and fp32:
        lo, hi = min(r["bpc"] for r in fp32), max(r["bpc"] for r in fp32)
        text += ["", "| shakespeare-bd3-block4 | test BPC (200 sequences) |", "|---|---|",
                 *[f"| fp32 seed {r['seed']} | {r['bpc']:.3f} ± {r['stderr']:.3f} |" for r in fp32],
                 f"| **bf16 seed 0** | **{bf16['bpc']:.3f} ± {bf16['stderr']:.3f}** |", "",
                 f"bf16 seed 0 against fp32 seed 0 (the same draws): {bf16['bpc'] - fp32[0]['bpc']:+.3f} bits. "
                 f"The fp32 seeds span {lo:.3f}-{hi:.3f} ({hi - lo:.3f}). The bf16 run: `OMP_NUM_THREADS=1 vmd train "
                 "--preset shakespeare-bd3-block4 --set device.precision=bf16 --set device.device=cpu --set "
                 f"train.seed=0 --out {TEXT_BF16.relative_to(ROOT)}`, {bf16['minutes']:.0f} min of training; its "
                 f"last logged matmul share {100 * bf16['share']:.0f}% (of the bf16 matmul), tokens/s "
                 f"{bf16['tokens']:,.0f}."]
    return {"bf16 against fp32 on the CPU": "\n".join(text)}


def _text_bpc(run: Path) -> dict | None:
    """Test BPC of a finished run as bench/text.py scores it (200 sequences, batches of 32, 4 draws)."""
    if not (run / checkpoint.MODEL_FILE).exists():
        print(f"  {run}: not trained, left out", flush=True)
        return None
    _, cfg, step = checkpoint.load_model(run)
    if step < cfg.train.steps:
        print(f"  {run}: {step} of {cfg.train.steps} steps, left out", flush=True)
        return None
    r, _, _ = score_bpc(run, 200)
    meta = checkpoint.read_meta(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"bpc": r["bits"], "stderr": r["stderr"], "seed": cfg.train.seed, "minutes": meta.get("elapsed_s", 0) / 60,
            "share": rows[-1].get("matmul_share", float("nan")), "tokens": rows[-1].get("tokens_per_s", float("nan"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ddp", action="store_true", help="data-parallel steps/s: 1 process against 2")
    p.add_argument("--bf16", action="store_true", help="bf16 against fp32: synthetic presets, shakespeare BPC")
    p.add_argument("--presets", default="shakespeare-bd3-block4", help="--ddp: presets, comma-separated")
    p.add_argument("--steps", type=int, default=40, help="--ddp: steps per run")
    p.add_argument("--log-every", type=int, default=10, help="--ddp: steps per logged window")
    p.add_argument("--rounds", type=int, default=3, help="--ddp: rounds")
    p.add_argument("--samples", type=int, default=20000, help="--bf16: samples per synthetic score")
    args = p.parse_args()
    if not (args.ddp or args.bf16):
        p.error("choose --ddp, --bf16 or both")
    unknown = [name for name in args.presets.split(",") if name not in C.list_presets()]
    if unknown or min(args.steps, args.log_every, args.rounds, args.samples) < 1 or args.steps <= args.log_every:
        p.error(f"unknown preset {unknown[0]!r}" if unknown else
                "--steps, --log-every, --rounds and --samples must be >= 1, and --steps above --log-every")
    sections = {}
    if args.ddp:
        sections.update(ddp_section(args))
    if args.bf16:
        sections.update(bf16_sections(args))
    write_sections(OUT, TITLE, sections, HAND)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
