"""One prepared run for a lent GPU, one command per task.

    VMD_CACHE_DIR=.device-cache python bench/gpu_session.py fill-cache     # here, beforehand
    VMD_CACHE_DIR=.device-cache python bench/gpu_session.py sudoku --minutes 5 --out "$OUT"
    VMD_CACHE_DIR=.device-cache python bench/gpu_session.py text --minutes 4 --text-file F --out "$OUT"
    python bench/gpu_session.py join DIR     # here, on a copy of what `sudoku` brought back: the runs

`python bench/gpu_session.py COMMAND --help` tells each one's story; the machinery they share is
bench/_gpu_common.py. The Sudoku stages (two small presets side by side, scored by
bench/sudoku.py, fp16 models brought back) are bench/_gpu_sudoku.py, documented in
docs/bundled-models.md; the text ones (two 12 x 768 presets one after the other,
BPC and KV-cache timing, a summary brought back) are bench/_gpu_text.py, in docs/gpu-session.md.

A lent GPU comes with minutes, not hours (docs/bundled-models.md), and one command runs at most
10 of them, so every preset here trains for as many steps as the budget allows rather than its
own count. `train_until` does that for both tasks: it times a short probe of the preset's own
steps (`probe_rate`: 5 steps of warm-up for allocations and kernel choices, then --probe-steps
timed, the device synchronised around them, in a throw-away run), then trains a fresh run whose
step count, and so its cosine schedule, ends by the deadline (`fit_steps`: warm-ups longer than
a tenth (learning rate) or a fifth (KL weight) of that count are shortened to it; everything else
is the preset's). A probe that runs out of GPU memory is retried at half the batch, to an eighth
at most (`probe_fitting`): an untried GPU's one session should come back with a number, the batch
it ran at said. It returns the run's throughput: tokens/s = steps x batch x length / the
trainer's own seconds (saves left out), the probe's, the medians the trainer logged, the peak
GPU memory. The stages after it run through `stage`, which records a failure in one line (the
traceback on stderr) and rewrites the summary either way: one stage failing, or the command
stopped at its limit, must not lose what the others found. Files come back from the device at
16 MiB at most: `split` cuts a model file into parts below that, `join` puts them back, checked.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import _gpu_sudoku
import _gpu_text
from _gpu_common import join


def run_join(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    if not (args.dir / "session.json").is_file():
        ap.error(f"{args.dir}: no session.json there (give the folder the device run's files came back to)")
    join(args.dir)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {  # name: (summary, description, add its options, run it)
        "sudoku": ("train and score the GPU Sudoku presets side by side; fp16 models come back",
                   _gpu_sudoku.__doc__, _gpu_sudoku.add_session_arguments, _gpu_sudoku.run_session),
        "text": ("train the text presets one after the other; BPC and KV-cache speed come back",
                 _gpu_text.__doc__, _gpu_text.add_arguments, _gpu_text.run),
        "join": ("rebuild the model files `sudoku` split, as run directories", join.__doc__,
                 lambda p: p.add_argument("dir", type=Path, metavar="DIR", help="where the fetched files are"),
                 run_join),
        "fill-cache": ("generate the Sudoku training pools and test sets, to carry to the device",
                       _gpu_sudoku.fill_cache.__doc__, _gpu_sudoku.add_cache_arguments, _gpu_sudoku.run_fill_cache)}
    parsers = {}
    for name, (summary, description, add, _) in commands.items():
        parsers[name] = sub.add_parser(name, help=summary, description=inspect.cleandoc(description),
                                       formatter_class=raw)
        add(parsers[name])
    args = ap.parse_args()
    commands[args.command][3](args, parsers[args.command])


if __name__ == "__main__":
    main()
