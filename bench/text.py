"""Text and block diffusion on tinyshakespeare: training step costs, and test bits per character.

    python bench/text.py --speed-only                 # the step-cost table (a few minutes)
    python bench/text.py --seeds 0,1,2                # train and score every preset, 3 seeds each
    python bench/text.py --steps 300 --seeds 0        # a short run of the whole pipeline
    python bench/text.py --generation                 # the KV cache's speed and sample quality (seed-0 runs)
    python bench/text.py --few-step --variants bd3,mixture --ks 1,2,0   # trained for few steps per block

Runs go to runs/bench-text/PRESET-sSEED (a finished run there is reused: delete it to retrain).
Writes docs/results-text.md: each run replaces the sections it made and keeps the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import _docs
from _docs import matmul_flops, write_sections
from _fewstep import VARIANTS, study
from _textgen import generation_sections
from vmd import checkpoint, config as C
from vmd.runtime.allocator import keep_freed_memory
from vmd.diffusion import diffusion_loss
from vmd.evaluate import likelihood
from vmd.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("shakespeare-ar", "shakespeare-bd3-block4", "shakespeare-block4", "shakespeare-mdm")
BASE = "shakespeare-bd3-block4"  # step costs relative to BD3 with blocks of 4
PAPER = {"shakespeare-ar": "AR 1.38", "shakespeare-bd3-block4": "BD3-LM block 4 1.52",
         "shakespeare-block4": "VMD block 4 1.515", "shakespeare-mdm": "MDLM 1.81"}
HAND = "## Reading (written by hand"


def step_flops(trainer: Trainer) -> float:
    """FLOPs of one training step (forward and backward of the loss), counted by torch."""
    x0, given = trainer.task.train_batch(trainer.cfg.train.batch_size, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        out = diffusion_loss(trainer.model, x0, trainer.schedule, trainer.cfg.diffusion, trainer.cfg.latent,
                             generator=torch.Generator().manual_seed(0))
        out.loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def speed(presets, rounds: int, steps: int) -> tuple[dict, float]:
    """Median ms per training step of each preset, the presets taking turns in each round (the host
    drifts), with a plain matmul timed in every round: {preset: (ms, tokens/s, GFLOP/s, share)}."""
    trainers = {}
    for name in presets:
        cfg = C.load(name, None, ["device.device=cpu"])
        trainers[name] = Trainer.create(cfg, Path(tempfile.mkdtemp()) / "run")
        trainers[name].task.prepare()
        for _ in range(2):
            trainers[name].train_step()
    times, mms = {n: [] for n in presets}, []
    for _ in range(rounds):
        mms.append(matmul_flops(reps=10))
        for name, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                t.train_step()
            times[name].append((time.perf_counter() - t0) / steps)
    mm = statistics.median(mms)
    out = {}
    for name, t in trainers.items():
        sec = statistics.median(times[name])
        flops = step_flops(t)
        tokens = t.cfg.train.batch_size * t.task.length
        out[name] = (1000 * sec, tokens / sec, flops / sec / 1e9, flops / sec / mm, t.parameters)
        t.close()
    return out, mm


def train_and_score(name: str, seed: int, steps: int | None, max_sequences: int, train: bool = True) -> dict | None:
    """The test BPC of PRESET-sSEED, trained (or resumed) to its budget first; with ``train=False``
    None for a run that has not finished."""
    run = ROOT / "runs" / "bench-text" / f"{name}-s{seed}"
    sets = [f"train.seed={seed}", "device.device=cpu"] + ([f"train.steps={steps}"] if steps else [])
    cfg = C.load(name, None, sets)
    done = checkpoint.load_model(run)[2] if (run / checkpoint.MODEL_FILE).exists() else 0
    if done > cfg.train.steps:
        raise SystemExit(f"{run} has trained {done} steps, more than the {cfg.train.steps} asked for: delete it")
    if done < cfg.train.steps and not train:
        print(f"  {run}: {done} of {cfg.train.steps} steps, left out (--score-only)", flush=True)
        return None
    if done < cfg.train.steps:  # new, or stopped part way: resumed to this budget
        t0 = time.perf_counter()
        budget = lambda c: dataclasses.replace(c, train=dataclasses.replace(c.train, steps=cfg.train.steps))  # noqa: E731
        trainer = Trainer.resume(run, budget) if done else Trainer.create(cfg, run)
        trainer.task.prepare()
        trainer.run()
        print(f"  trained {name} seed {seed}: {trainer.step} steps, {time.perf_counter() - t0:.0f} s", flush=True)
    r, _, step = score_bpc(run, max_sequences)
    return {"bpc": r["bits"], "stderr": r["stderr"], "sequences": r["sequences"], "step": step}


def score_bpc(run: Path, max_sequences: int) -> tuple[dict, C.Config, int]:
    """The run's test BPC as `vmd eval RUN --max-sequences N` computes it (batches of 32, 4 draws of
    the times, seed 0): (``likelihood``'s result, the run's config, its step)."""
    model, cfg, step, task = checkpoint.load_run(run)
    return likelihood(model, task.eval_sequences("test", max_sequences), cfg, draws=4, seed=0, batch_size=32), cfg, step


def main() -> None:
    keep_freed_memory()  # as the vmd command does (vmd/runtime/allocator.py)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="training seeds (comma-separated)")
    p.add_argument("--steps", type=int, default=None, help="training steps [default: each preset's]")
    p.add_argument("--max-sequences", type=int, default=200, help="test sequences scored per run")
    p.add_argument("--speed-only", action="store_true", help="only the step-cost table")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--score-only", action="store_true", help="train nothing: score the finished runs of --seeds")
    p.add_argument("--generation", action="store_true", help="only generation: the KV cache's speed, sample quality")
    p.add_argument("--samples", type=int, default=500, help="--generation, --few-step: samples per quality row")
    p.add_argument("--bd3", default="runs/bench-text/shakespeare-bd3-block4-s0", help="--generation: the BD3 run")
    p.add_argument("--vmd", default="runs/bench-text/shakespeare-block4-s0", help="--generation: the block VMD run")
    p.add_argument("--judge", default="runs/bench-text/shakespeare-ar-s0", help="--generation: the AR judge run")
    p.add_argument("--few-step", action="store_true", help="only the few-step study (bench/_fewstep.py)")
    p.add_argument("--variants", default="bd3,mixture,prefix", help="--few-step: variants, of " + ", ".join(VARIANTS))
    p.add_argument("--ks", default="1,2,0", help="--few-step: the steps per block trained for (0: continuous)")
    args = p.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds takes integers separated by commas, got {args.seeds!r}")
    if args.generation:
        return write(generation_sections(args))
    if args.few_step:
        return write(study(args))
    perf, mm = speed(PRESETS, args.rounds, steps=5)
    sections = step_cost_section(args, perf, mm)
    if not args.speed_only:
        scores = {name: [r for s in seeds if (r := train_and_score(name, s, args.steps, args.max_sequences,
                                                                    not args.score_only)) is not None]
                  for name in PRESETS}
        sections.update(bpc_section(args, scores, seeds))
    write(sections)


def made_by() -> str:
    return _docs.made_by("bench/text.py")


def write(sections: dict[str, str]) -> None:
    out = ROOT / "docs" / "results-text.md"
    write_sections(out, "Text and block diffusion on tinyshakespeare", sections, HAND)
    for heading, body in sections.items():
        print(f"## {heading}\n\n{body}\n")
    print(f"wrote {out}")


def step_cost_section(args, perf, mm) -> dict[str, str]:
    lines = [made_by(), "",
             f"Each preset's training step (batch x length tokens; a block model runs 2L tokens through the "
             f"denoiser), median of {args.rounds} rounds of 5 steps in which the presets take turns; FLOPs counted "
             f"by torch's FlopCounterMode (forward and backward); share of a plain fp32 1024x1024 matmul timed in "
             f"the same rounds ({mm / 1e9:.1f} GFLOP/s, median).", "",
             f"| preset | parameters | ms / step | x {BASE} | tokens / s | GFLOP/s | share of matmul |",
             "|---|---|---|---|---|---|---|"]
    base = perf[BASE][0]
    for name, (ms, tps, gf, share, params) in perf.items():
        lines.append(f"| {name} | {params:,} | {ms:.0f} | {ms / base:.2f} | {tps:,.0f} | {gf:.1f} | {100 * share:.0f}% |")
    return {"Training step cost": "\n".join(lines)}


def bpc_section(args, scores, seeds) -> dict[str, str]:
    lines = [made_by(), "",
             f"The NELBO on the first {args.max_sequences} test sequences (128 characters each; `vmd eval RUN "
             f"--max-sequences {args.max_sequences}`: batches of 32, 4 draws of the times per sequence stratified "
             f"over each batch, seed 0); seeds {', '.join(map(str, seeds))} of training "
             f"{'(the finished runs of them: the runs column) ' if args.score_only else ''}"
             f"{'each preset' + chr(39) + 's steps' if not args.steps else f'{args.steps} steps each'}. "
             "Beside them, the papers' text8 numbers (method.md §6): another corpus and scale, for the ordering.",
             "", "| preset | BPC mean | spread (min-max) | runs | stderr of one run | text8, paper |",
             "|---|---|---|---|---|---|"]
    for name, runs in scores.items():
        if not runs:
            lines.append(f"| {name} | - | - | 0 | - | {PAPER[name]} |")
            continue
        b = [r["bpc"] for r in runs]
        lines.append(f"| {name} | {statistics.mean(b):.3f} | {min(b):.3f}-{max(b):.3f} | {len(b)} | "
                     f"{statistics.mean(r['stderr'] for r in runs):.3f} | {PAPER[name]} |")
    return {"Test bits per character": "\n".join(lines)}


if __name__ == "__main__":
    main()
