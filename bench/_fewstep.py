"""The few-step half of bench/text.py (``--few-step``): BD3 and block VMD variants trained for the
sampler that fills each block in k steps (``diffusion.steps``: 1, 2, or 0 for continuous time),
scored on every bound (continuous; 1, 2 and 4 steps per block) and by their samples at 1, 2 and 4
steps per block; with the step costs of training and of sampling at one step per block.

Runs go to runs/bench-text/few/VARIANT-kK-sSEED (a finished run is reused, its scores cached in
RUN/fewstep-scores.json for its step). Two processes may train disjoint ``--variants`` at once.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path


from _docs import made_by as _made_by
from _textgen import quality
from vmd import checkpoint, config as C
from vmd.blockwise import generate_blocks
from vmd.rng import sample_generators
from vmd.evaluate import likelihood
from vmd.models import resolve
from vmd.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
# name -> (label, preset, overrides); each trained at every k of --ks
VARIANTS = {
    "bd3": ("BD3 block 4", "shakespeare-bd3-block4", []),
    "mixture": ("block VMD, 32-class mixture", "shakespeare-block4",
                ["latent.kind=mixture", "latent.components=32", "latent.kl_warmup_steps=0"]),
    "prefix": ("block VMD, Gaussian z, prefix prior", "shakespeare-block4", ["latent.prior=prefix"]),
    "normal": ("block VMD, Gaussian z, N(0, I) prior", "shakespeare-block4", []),
    "held": ("block VMD, z held at 0 (control)", "shakespeare-block4", ["latent.constant=true"]),
}
BOUNDS = (0, 1, 2, 4)  # 0: the continuous NELBO
SAMPLE_STEPS = (1, 2, 4)
JUDGE = "shakespeare-ar"  # the bundled AR (the seed-0 bench run of its preset)


def run_dir(variant: str, k: int, seed: int) -> Path:
    return ROOT / "runs" / "bench-text" / "few" / f"{variant}-k{k}-s{seed}"


def config(variant: str, k: int, seed: int, steps: int | None) -> C.Config:
    _, preset, sets = VARIANTS[variant]
    sets = sets + [f"diffusion.steps={k}", f"train.seed={seed}", "device.device=cpu",
                   f"sample.nfe={k or 4}"] + ([f"train.steps={steps}"] if steps else [])
    return C.load(preset, None, sets)


def train(variant: str, k: int, seed: int, steps: int | None) -> None:
    run, cfg = run_dir(variant, k, seed), config(variant, k, seed, steps)
    done = checkpoint.load_model(run)[2] if (run / checkpoint.MODEL_FILE).exists() else 0
    if done >= cfg.train.steps:
        return
    t0 = time.perf_counter()
    trainer = Trainer.resume(run) if done else Trainer.create(cfg, run)
    trainer.task.prepare()
    trainer.run()
    print(f"  trained {run.name}: {trainer.step} steps, {time.perf_counter() - t0:.0f} s", flush=True)


def score(variant: str, k: int, seed: int, max_sequences: int, samples: int, steps: int | None) -> dict | None:
    """The run's bounds and sample quality (cached per step); None if it has not finished."""
    run, cfg = run_dir(variant, k, seed), config(variant, k, seed, steps)
    step = checkpoint.read_meta(run).get("step", 0) if (run / checkpoint.MODEL_FILE).exists() else 0
    if step < cfg.train.steps:
        return None
    cache = run / "fewstep-scores.json"
    key = f"{step}/{max_sequences}/{samples}"
    old = json.loads(cache.read_text()) if cache.exists() else {}
    if key in old:  # (scored by the code that trained it, which a later checkout may not load)
        return old[key]
    model, saved, step, task = checkpoint.load_run(run)
    model.eval()
    seqs = task.eval_sequences("test", max_sequences)
    out = {"step": step}
    for b in BOUNDS:
        r = likelihood(model, seqs, saved, draws=4, seed=0, batch_size=32, steps=b)
        out[f"bpc_{b}"], out[f"se_{b}"] = r["bits"], r["stderr"]
    rows = quality({run.name: str(run)}, str(resolve(JUDGE)), samples, SAMPLE_STEPS, with_data=False)
    for s, m in rows[next(iter(rows))]:
        out.update({f"{name}_{s}": m[name] for name in ("gen_ppl", "word_validity", "unigram_entropy_bits")})
    old[key] = out
    cache.write_text(json.dumps(old))
    print(f"  scored {run.name}: {out}", flush=True)
    return out


def speeds(rounds: int, variants: list[str]) -> dict[str, tuple[float, float]]:
    """Per variant trained for one step: ms per training step and per sample of 128 characters at one
    step per block (batch 16, cached), medians of ``rounds`` in which the variants take turns."""
    trainers, models = {}, {}
    for v in variants:
        trainers[v] = Trainer.create(config(v, 1, 0, None), Path(tempfile.mkdtemp()) / "run")
        trainers[v].task.prepare()
        trainers[v].train_step()
        models[v] = trainers[v].model
    train_t, sample_t = {v: [] for v in variants}, {v: [] for v in variants}
    for r in range(rounds):
        for v, t in trainers.items():
            t.model.train()
            t0 = time.perf_counter()
            for _ in range(3):
                t.train_step()
            train_t[v].append((time.perf_counter() - t0) / 3)
            t.model.eval()
            t0 = time.perf_counter()
            generate_blocks(t.model, 16, t.model.length, steps_per_block=1, generator=sample_generators(r, 16))
            sample_t[v].append((time.perf_counter() - t0) / 16)
    for t in trainers.values():
        t.close()
    return {v: (1000 * statistics.median(train_t[v]), 1000 * statistics.median(sample_t[v])) for v in variants}


def _mean_spread(values: list[float], fmt: str = "{:.3f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def sections(args, variants, ks, seeds, scores, speed) -> dict[str, str]:
    runs = ", ".join(map(str, seeds))
    head = [_made_by("bench/text.py"), "",
            f"Each variant trained at seeds {runs} ({args.steps or 'each preset' + chr(39) + 's'} steps) on the bound "
            "of the sampler that fills each block of 4 in k steps (k = 0: the continuous-time NELBO), "
            f"`{{preset}} --set diffusion.steps=k`. Test BPC on the first {args.max_sequences} test sequences "
            "(`vmd eval RUN --bound-steps K --max-sequences N`: 4 draws, seed 0): the continuous NELBO and the "
            "bounds of the 1-, 2- and 4-step samplers. Mean over seeds (min-max); the runs column counts the "
            "finished runs."]
    lines = head + ["", "| variant | trained k | runs | continuous | 1 step / block | 2 steps | 4 steps |",
                    "|---|---|---|---|---|---|---|"]
    for v in variants:
        for k in ks:
            got = [s for s in scores.get((v, k), []) if s]
            cells = [_mean_spread([s[f"bpc_{b}"] for s in got]) for b in BOUNDS]
            lines.append(f"| {VARIANTS[v][0]} | {k or 'continuous'} | {len(got)} | " + " | ".join(cells) + " |")
    out = {"Few steps per block: bounds": "\n".join(lines)}
    lines = [_made_by("bench/text.py"), "",
             f"The same runs' samples: {args.samples} of 128 characters per run and steps per block, no prompt, "
             "seed 0, temperature 1, random order, a latent drawn once per block (a mixture: its class at each "
             f"step). gen-PPL under the bundled `{JUDGE}`; word validity against the training split's words; "
             "unigram entropy of the characters (the test split: 4.83 bits). Mean over seeds (min-max).", "",
             "| variant | trained k | gen-PPL 1 / 2 / 4 steps | word validity 1 / 2 / 4 | entropy 1 / 2 / 4 |",
             "|---|---|---|---|---|"]
    for v in variants:
        for k in ks:
            got = [s for s in scores.get((v, k), []) if s]
            cell = {name: " / ".join(_mean_spread([s[f"{name}_{n}"] for s in got], fmt)
                                     for n in SAMPLE_STEPS)
                    for name, fmt in (("gen_ppl", "{:.1f}"), ("word_validity", "{:.3f}"),
                                      ("unigram_entropy_bits", "{:.2f}"))}
            lines.append(f"| {VARIANTS[v][0]} | {k or 'continuous'} | {cell['gen_ppl']} | {cell['word_validity']} | "
                         f"{cell['unigram_entropy_bits']} |")
    out["Few steps per block: samples"] = "\n".join(lines)
    if speed:
        base = speed["bd3"]
        lines = [_made_by("bench/text.py"), "",
                 f"Trained for one step per block, initial weights: a training step (batch 32 x 128 characters), "
                 f"and one sample of 128 characters at one step per block (batch 16, cached), medians of "
                 f"{args.rounds} rounds in which the variants take turns.", "",
                 "| variant | ms / training step | x BD3 | ms / sample | x BD3 |", "|---|---|---|---|---|"]
        for v, (tr, sa) in speed.items():
            lines.append(f"| {VARIANTS[v][0]} | {tr:.0f} | {tr / base[0]:.2f} | {sa:.2f} | {sa / base[1]:.2f} |")
        out["Few steps per block: step costs"] = "\n".join(lines)
    return out


def study(args) -> dict[str, str]:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    ks = [int(k) for k in args.ks.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.score_only:
        for seed in seeds:  # every variant's seed 0 first: a stopped study still compares them
            for v in variants:
                for k in ks:
                    train(v, k, seed, args.steps)
    scores = {(v, k): [score(v, k, s, args.max_sequences, args.samples, args.steps) for s in seeds]
              for v in variants for k in ks}
    speed = speeds(args.rounds, [v for v in ("bd3", "mixture", "prefix") if v in variants]) if args.rounds else {}
    return sections(args, variants, ks, seeds, scores, speed if "bd3" in speed else {})
