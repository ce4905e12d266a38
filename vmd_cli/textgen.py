"""``vmd sample`` for text: block-by-block generation (vmd/blockwise.py) streamed to the terminal."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import torch
from rich.live import Live
from rich.rule import Rule
from rich.text import Text

from vmd.blockwise import MAX_LENGTH, check_generation, generate_blocks
from vmd.runtime.errors import DataError
from vmd_cli.common import GENERATION_OPTIONS, load_any, model_label
from vmd_cli.console import err, fail, out

DEFAULT_TEXT_MODEL = "shakespeare-block4"


def read_prompt(prompt: Optional[str], prompt_file: Optional[Path]) -> str:
    if prompt is not None and prompt_file is not None:
        fail("give --prompt or --prompt-file, not both")
    if prompt_file is None:
        return prompt or ""
    try:
        if str(prompt_file) == "-":
            data = sys.stdin.buffer.read(4 * MAX_LENGTH + 1)
        elif not prompt_file.is_file():
            fail(f"{prompt_file} is not a regular file")
        else:
            with open(prompt_file, "rb") as f:
                data = f.read(4 * MAX_LENGTH + 1)
    except OSError as e:
        fail(f"{prompt_file}: {e.strerror or e}")
    if len(data) > 4 * MAX_LENGTH:
        fail(f"{prompt_file} is over {4 * MAX_LENGTH:,} bytes: longer than any sample may be")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        fail(f"{prompt_file} is not UTF-8 text (byte offset {e.start})")


def sample_text(model, cfg, task, source: str, dev, *, n: int, length: Optional[int], steps: Optional[int],
                prompt: str, sc, batch_size: int, cache: bool, fmt: str) -> None:
    from vmd.rng import sample_generators
    from vmd.schedule import make_schedule

    length = model.length if length is None else length
    steps = min(sc.nfe, model.block_size) if steps is None else steps
    ids = task.encode_prompt(prompt)
    check_generation(model, length, steps, ids.numel(), GENERATION_OPTIONS)
    if batch_size < 1 or n < 1:
        fail("-n and --batch-size must be >= 1")
    schedule = make_schedule(cfg.diffusion.schedule)
    settings = {"model": source, "length": length, "steps_per_block": steps, "block_size": model.block_size,
                "prompt": prompt, "temperature": sc.temperature, "strategy": sc.strategy, "z_policy": sc.z_policy,
                "seed": sc.seed, "cache": cache}
    streams = sample_generators(sc.seed, n)
    live_view = fmt == "text" and out.is_terminal
    for lo in range(0, n, batch_size):
        rows = min(batch_size, n - lo)
        gen = streams.subset(torch.arange(lo, lo + rows))
        shown = Stream(task, lo, n, model.block_size, length, live_view, plain=fmt == "text" and n == 1)
        with shown:
            x = generate_blocks(model, rows, length, steps_per_block=steps, prompt=ids, strategy=sc.strategy,
                                temperature=sc.temperature, z_policy=sc.z_policy, schedule=schedule,
                                generator=gen, cache=cache, on_block=shown.update, device=dev)
        texts = task.format(x.cpu())
        for i, text in enumerate(texts):
            if fmt == "json":
                print(json.dumps({"index": lo + i, "text": text, **settings}), flush=True)
            elif not shown.streamed:
                if n > 1:
                    out.print(Rule(f"sample {lo + i + 1} of {n}", style="dim") if out.is_terminal else "---",
                              highlight=False)
                out.print(Text(text), soft_wrap=True)
    if fmt == "text" and live_view:
        err.print(f"[dim]{model.block_size}-token blocks, {steps} steps per block, seed {sc.seed}, "
                  f"{'cached' if cache else 'uncached'} prefix[/]", highlight=False)


class Stream:
    """Shows each block as it is committed: a live view of the batch's samples on a terminal; with
    one sample on a pipe, the text itself, written as it grows; otherwise nothing until the end."""

    def __init__(self, task, first: int, total: int, block_size: int, length: int, live: bool, plain: bool):
        self.task, self.first, self.total, self.block_size, self.length = task, first, total, block_size, length
        self.live = Live(console=out, transient=True, auto_refresh=False, vertical_overflow="crop") if live else None
        self.plain = plain and not live
        self.written = 0
        self.streamed = False  # the text is out already (plain streaming)

    def __enter__(self):
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
        if self.plain and exc[0] is None:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.streamed = True

    def update(self, index: int, x: torch.Tensor) -> None:
        texts = self.task.format(x[:, : min((index + 1) * self.block_size, self.length)].cpu())
        if self.plain:
            sys.stdout.write(texts[0][self.written:])
            sys.stdout.flush()
            self.written = len(texts[0])
        elif self.live is not None:
            view = Text()
            for i, t in enumerate(texts):
                view.append(f"sample {self.first + i + 1} of {self.total}\n", style="dim")
                view.append(t + "\n")
            self.live.update(view, refresh=True)


DEFAULT_JUDGE = "shakespeare-ar"


def load_judge(source: Optional[str], task, dev, length: int):
    """The autoregressive judge of gen-PPL: ``--judge``, or the bundled one where it speaks the run's
    vocabulary and length (else None: no gen-PPL, and one line says why)."""
    judge, _, _, _, judge_task = load_any(source or DEFAULT_JUDGE, str(dev), with_task=True)
    if source is None and (not task.same_vocabulary(judge_task) or judge.length != length):
        err.print(f"no gen-PPL: the bundled judge {DEFAULT_JUDGE} reads another vocabulary or length than this "
                  "run; give --judge RUN, an autoregressive run (e.g. --preset shakespeare-ar) on the same corpus",
                  highlight=False, soft_wrap=True)
        return None, None
    if not task.same_vocabulary(judge_task):
        fail(f"the judge {source or DEFAULT_JUDGE} has another vocabulary than this run: give --judge RUN, an "
             "autoregressive run (e.g. --preset shakespeare-ar) trained on the same corpus")
    if judge.block_size != 1:
        fail(f"the judge {source} is not autoregressive (blocks of {judge.block_size}); give a run trained with "
             "model.block_size 1 (e.g. --preset shakespeare-ar)")
    return judge, source or DEFAULT_JUDGE


def eval_quality(model, cfg, step, dev, task, source: str, *, samples: int, steps_list: Optional[list[int]],
                 judge_source: Optional[str], sc, batch_size: int, as_json: bool) -> None:
    """Sample quality at a few steps per block: gen-PPL under an autoregressive judge, word validity and
    unigram entropy, one row per steps-per-block, beside the same measures of the test split."""
    import time

    from vmd.evaluate import draw_samples, sample_quality
    from vmd_cli.progress import progress_bar

    steps_list = steps_list or [k for k in (1, 2, 4) if k <= model.block_size]
    for k in steps_list:
        check_generation(model, model.length, k, names=GENERATION_OPTIONS)
    judge, judge_name = load_judge(judge_source, task, dev, model.length)
    if judge is not None and judge.length != model.length:
        fail(f"the judge reads {judge.length} tokens, this model makes {model.length}")

    try:  # the corpus: the word list and the test split (a run loads and samples without it)
        task.prepare()
        corpus = True
    except DataError as e:
        corpus = False
        err.print(f"no word validity and no test-split row: {e}", highlight=False, soft_wrap=True)

    def measure(x):
        return sample_quality(x, task, judge, batch_size, dev, words=corpus)

    rows = [{"steps_per_block": "test data", **measure(task.eval_sequences("test", samples)),
             "samples_per_s": None}] if corpus else []
    for k in steps_list:
        settings = dataclasses.replace(sc, nfe=k, num_samples=samples, batch_size=batch_size)
        with progress_bar(f"{k} step{'s' if k > 1 else ''} per block", samples) as (bar, job):
            t0 = time.perf_counter()
            x = draw_samples(model, task, settings, cfg.diffusion.schedule, dev, on_batch=lambda n: bar.advance(job, n))
            rate = samples / (time.perf_counter() - t0)
        rows.append({"steps_per_block": k, **measure(x), "samples_per_s": rate})
    result = {"method": cfg.method, "model": source, "step": step, "block_size": model.block_size, "judge": judge_name,
              "samples": samples, "length": model.length, "seed": sc.seed, "temperature": sc.temperature,
              "strategy": sc.strategy, "z_policy": sc.z_policy, "rows": rows}
    if as_json:
        print(json.dumps(result))
        return
    from rich.table import Table

    table = Table(title=f"{model_label(cfg, model)} text, step {step}: {samples} samples of {model.length} tokens, "
                        f"seed {sc.seed}, temperature {sc.temperature}, {sc.strategy} order",
                  caption=f"{source}; gen-PPL under {judge_name or 'no judge'}; words of the training split")
    for col in ("steps / block", "gen-PPL", "word validity", "unigram entropy (bits)", "samples / s"):
        table.add_column(col, justify="right")
    for r in rows:
        validity = f"{r['word_validity']:.3f}" if "word_validity" in r else "n/a"
        ppl = f"{r['gen_ppl']:.2f}" if "gen_ppl" in r else "n/a"
        rate = "" if r["samples_per_s"] is None else f"{r['samples_per_s']:.1f}"
        table.add_row(str(r["steps_per_block"]), ppl, validity, f"{r['unigram_entropy_bits']:.3f}", rate)
    out.print(table)
