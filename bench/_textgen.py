"""The generation half of bench/text.py: the KV cache against recomputing the prefix, and the
quality of BD3 and block VMD samples at 1, 2 and 4 steps per block."""

from __future__ import annotations

import statistics
import time

import torch

from _docs import made_by as _made_by
from vmd import checkpoint, config as C
from vmd.blockwise import generate_blocks
from vmd.rng import sample_generators
from vmd.evaluate import draw_samples, sample_quality
from vmd.model import build_model

SPEED_PRESET, SPEED_LENGTH, SPEED_BATCH = "shakespeare-bd3-block4", 256, 16

def cache_speed(rounds: int) -> list[tuple]:
    """Samples/s and tokens/s of L = 256, B = 4, batch 16, cached and not, at 1 and 4 steps per
    block, on one torch thread and on all, the cases taking turns in each round; medians. The model
    is the preset's at L = 256 with its initial weights (the speed does not depend on them)."""
    cfg = C.load(SPEED_PRESET, None, [f"task.length={SPEED_LENGTH}", "device.device=cpu"])
    torch.manual_seed(0)
    model = build_model(cfg, 65, SPEED_LENGTH).eval()
    threads = torch.get_num_threads()
    cases = [(n, k, cache) for n in sorted({1, threads}) for k in (1, 4) for cache in (True, False)]
    times = {c: [] for c in cases}
    generate_blocks(model, SPEED_BATCH, 32, steps_per_block=1, generator=sample_generators(0, SPEED_BATCH))
    try:
        for r in range(rounds):
            for n, k, cache in cases:
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                generate_blocks(model, SPEED_BATCH, SPEED_LENGTH, steps_per_block=k, cache=cache,
                                generator=sample_generators(r, SPEED_BATCH))
                times[(n, k, cache)].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    out = []
    for n in sorted({1, threads}):
        for k in (1, 4):
            cached, full = statistics.median(times[(n, k, True)]), statistics.median(times[(n, k, False)])
            out.append((n, k, SPEED_BATCH / cached, SPEED_BATCH * SPEED_LENGTH / cached, SPEED_BATCH / full,
                        SPEED_BATCH * SPEED_LENGTH / full, full / cached))
    return out

def first_block_seconds(run: str, repeats: int = 5) -> float:
    """Median seconds from a loaded model to its first block of one sample (what ``vmd sample`` shows
    first), at the run's own settings."""
    model, cfg, _, _ = checkpoint.load_run(run)
    model.eval()
    times = []
    for r in range(repeats):
        t0, seen = time.perf_counter(), []

        def first(index, x):
            if not seen:
                seen.append(time.perf_counter() - t0)

        generate_blocks(model, 1, model.length, steps_per_block=min(cfg.sample.nfe, model.block_size),
                        generator=sample_generators(r, 1), on_block=first)
        times.append(seen[0])
    return statistics.median(times)


def quality(runs: dict[str, str], judge_run: str, samples: int, steps=(1, 2, 4), with_data: bool = True) -> dict:
    """{label: [(k, metrics)]} plus (``with_data``) the test split's own row, each run's samples at seed 0."""
    judge, _, _, judge_task = checkpoint.load_run(judge_run)
    judge.eval()
    rows = {"test split (data)": [(None, sample_quality(judge_task.eval_sequences("test", samples), judge_task,
                                                      judge))]} if with_data else {}
    for label, run in runs.items():
        model, cfg, step, task = checkpoint.load_run(run)
        model.eval()
        if not task.same_vocabulary(judge_task):
            raise SystemExit(f"{run} and the judge {judge_run} have different vocabularies")
        rows[f"{label} ({run}, step {step})"] = out = []
        for k in steps:
            sc = C.from_dict(C.apply_overrides(C.to_dict(cfg), [f"sample.nfe={k}", f"sample.num_samples={samples}",
                                                                  "sample.batch_size=50", "sample.seed=0"])).sample
            t0 = time.perf_counter()
            x = draw_samples(model, task, sc, cfg.diffusion.schedule)
            m = sample_quality(x, task, judge)
            m["samples_per_s"] = samples / (time.perf_counter() - t0)
            out.append((k, m))
            print(f"  {label} k={k}: {m}", flush=True)
    return rows

def generation_sections(args) -> dict[str, str]:
    speed = cache_speed(args.rounds)
    lines = [_made_by("bench/text.py"), "",
             f"`{SPEED_PRESET}`'s model at L = {SPEED_LENGTH} (blocks of 4, its initial weights), {SPEED_BATCH} "
             f"samples of {SPEED_LENGTH} characters at once, block by block (vmd/blockwise.py); median of "
             f"{args.rounds} rounds in which the cases take turns. Cached: each step runs the model on the "
             "current block only, attending to the cached keys and values of the prefix (each block committed in the "
             "same pass as the next block's first step). Uncached (`--no-cache`): each step recomputes the whole "
             "prefix with the block. Same samples either way (tests/test_blockwise.py).", "",
             "| torch threads | steps / block | cached samples / s | cached tokens / s | uncached samples / s "
             "| uncached tokens / s | speed-up |", "|---|---|---|---|---|---|---|"]
    for n, k, cs, ct, us, ut, ratio in speed:
        lines.append(f"| {n} | {k} | {cs:.2f} | {ct:,.0f} | {us:.2f} | {ut:,.0f} | {ratio:.1f}x |")
    first = first_block_seconds(args.vmd)
    lines += ["", f"Time to the first block of one sample (what `vmd sample` shows first), from the loaded model "
              f"`{args.vmd}` at its own settings, median of 5: {1000 * first:.1f} ms."]
    sections = {"Generation: the KV cache": "\n".join(lines)}
    rows = quality({"BD3 block 4": args.bd3, "block VMD block 4": args.vmd}, args.judge, args.samples)
    lines = [_made_by("bench/text.py"), "",
             f"{args.samples} samples of 128 characters per row, no prompt, sampling seed 0 (one random stream per "
             "sample), temperature 1, random unmasking order, z drawn once per block. gen-PPL: the perplexity "
             f"of the samples under the autoregressive run `{args.judge}`; word validity: the share of words (runs of "
             "letters, each sample's first and last left out) found in the training split; unigram entropy of the "
             "characters. The first row scores the test split's first sequences the same way.", "",
             "| model | steps / block | gen-PPL | word validity | unigram entropy (bits) | samples / s |",
             "|---|---|---|---|---|---|"]
    for label, entries in rows.items():
        for k, m in entries:
            rate = "" if "samples_per_s" not in m else f"{m['samples_per_s']:.1f}"
            lines.append(f"| {label} | {'-' if k is None else k} | {m['gen_ppl']:.2f} | {m['word_validity']:.3f} | "
                         f"{m['unigram_entropy_bits']:.3f} | {rate} |")
    sections["Sample quality at few steps per block"] = "\n".join(lines)
    return sections
