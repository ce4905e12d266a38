"""`gpu_session.py text`: train the text presets (BD3 and block VMD, blocks of 4, 12 x 768, bf16)
within a time budget, score their BPC, time the KV cache, and leave a small summary to fetch.

    export PYTHONPATH=. VMD_CACHE_DIR=.device-cache
    python bench/gpu_session.py text --minutes 4 --text-file .device-cache/tinyshakespeare.txt --out "$OUT"
    python bench/gpu_session.py text --device cpu --minutes 0.3 --text-file ../shared/data/tinyshakespeare.txt \\
        --set model.dim=64 --set model.layers=2 --set model.heads=4 --set train.batch_size=8 --out /tmp/smoke

Corpus: text8 where the data cache (VMD_CACHE_DIR) holds its zip or its cached splits, else the
--text-file (the device machine has no internet and gets only the working tree and what `carry`
names, so the file must lie in a carried, git-ignored folder such as .device-cache/).

The presets train one after the other, not side by side as the Sudoku ones do: one 12 x 768
model at batch 512 x 256 tokens fills the GPU alone, so side by side each would get a share of
it and its tokens/s would measure that share. Each gets half of --minutes (time the first leaves
goes to the second) in _gpu_common.train_until: a probe of its own steps (the batch halved if it
runs out of GPU memory), then a fresh run of as many steps as fit (its cosine schedule ends on
time), saved once at the end, without validation. Tokens/s = steps x batch_size x task.length /
training seconds (saves left out); where the trainer logs tokens_per_s and matmul_share in
metrics.jsonl, their medians are reported too.
Then each model (its EMA weights, fp32 as `vmd eval` runs it) is scored: the NELBO of the first
--eval-sequences of the test split in bits per character; and block-by-block generation of
--gen-batch samples of the model's length is timed with the KV cache and without (prefix
recomputed), at 1 and 4 steps per block, the cases taking turns over --rounds rounds, medians,
the device synchronised around each. gpu-text.json and gpu-text.md under --out are rewritten
after each stage (_gpu_common.stage), so a run cut short still brings back what it finished. No
model files: 85M parameters would not be small.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _gpu_common import ROOT, stage, sync, train_until  # the shared machinery
from vmd import checkpoint, config as C
from vmd.blockwise import generate_blocks
from vmd.rng import sample_generators
from vmd.runtime.errors import ConfigError, VmdError
from vmd.evaluate import latent_stats, likelihood, mixture_stats
from vmd.tasks import text8
from vmd.train import resolve_device

PRESETS = "text8-bd3-block4,text8-block4"


def text8_cached() -> Path | None:
    """The cached text8 file (its splits, or its zip) under the data cache, or None."""
    folder = text8.zip_path().parent
    for name in (f"splits-v{text8.FORMAT_VERSION}.safetensors", "text8.zip"):
        if (folder / name).is_file():
            return folder / name
    return None


def corpus(text_file: Path | None) -> tuple[str, list[str]]:
    """What the runs train on, in words, and the override that says so: text8 if cached, else the file."""
    found = text8_cached()
    if found is not None:
        return f"text8 (from {found})", []
    if text_file is None:
        raise ConfigError(f"text8 is not in the data cache ({text8.zip_path()}) and no --text-file was given")
    path = text_file.resolve()
    if not path.is_file():
        raise ConfigError(f"--text-file {text_file}: no such file (on a device machine: carry its folder)")
    return f"{text_file} ({path.stat().st_size:,} bytes; text8 absent)", [f"task.file={path}"]


def label(cfg: C.Config) -> str:
    return f"{'block VMD' if cfg.method == 'vmd' else 'BD3'} block {cfg.model.block_size}"


def train(cfg: C.Config, preset: str, overrides: list[str], run_dir: Path, deadline: float, probe_steps: int) -> dict:
    """``preset`` trained by ``deadline``, saved once (train_until); its throughput, labelled."""
    return {"label": label(cfg), **train_until(preset, overrides, run_dir, deadline, probe_steps, save_once=True)}


def score(run_dir: Path, device: torch.device, split: str, sequences: int, draws: int) -> dict:
    """The NELBO in bits per token of the first ``sequences`` of ``split``, and a VMD's latent state."""
    model, cfg, step, task = checkpoint.load_run(run_dir, device)
    x = task.eval_sequences(split, sequences)
    t0 = time.perf_counter()
    r = likelihood(model, x, cfg, draws=draws, seed=0, batch_size=64, device=device)
    out = {"split": split, "bpc": r["bits"], "bpc_stderr": r["stderr"], "sequences": r["sequences"],
           "draws": r["draws"], "step": step, "seconds": round(time.perf_counter() - t0, 2)}
    if cfg.diffusion.steps:  # trained for the k-step sampler: its own bound too
        k = cfg.diffusion.steps
        out[f"bpc_{k}_steps"] = likelihood(model, x, cfg, draws=draws, seed=0, batch_size=64, device=device,
                                           steps=k)["bits"]
    if model.has_latent:
        out.update(latent_stats(model, x, None, cfg, device=device))
    if model.mixture:
        out.update(mixture_stats(model, x[:256], device=device))
    return out


def cache_speed(run_dir: Path, device: torch.device, batch: int, rounds: int) -> list[dict]:
    """Samples/s and tokens/s of block-by-block generation at the model's length, cached and not,
    at 1 step per block and at the block size; medians over ``rounds`` in which the cases take turns."""
    model, _, _, _ = checkpoint.load_run(run_dir, device)
    length, bs = model.length, model.block_size
    cases = [(k, cache) for k in sorted({1, bs}) for cache in (True, False)]
    for cache in (True, False):  # warm-up: kernel choices, the allocator
        generate_blocks(model, batch, 2 * bs, steps_per_block=1, cache=cache, generator=sample_generators(0, batch))
    times = {c: [] for c in cases}
    for r in range(rounds):
        for k, cache in cases:
            sync(device)
            t0 = time.perf_counter()
            generate_blocks(model, batch, length, steps_per_block=k, cache=cache, generator=sample_generators(r, batch))
            sync(device)
            times[(k, cache)].append(time.perf_counter() - t0)
    out = []
    for k in sorted({1, bs}):
        cached, full = statistics.median(times[(k, True)]), statistics.median(times[(k, False)])
        out.append({"steps_per_block": k, "batch": batch, "length": length, "cached_samples_per_s": batch / cached,
                    "cached_tokens_per_s": batch * length / cached, "uncached_samples_per_s": batch / full,
                    "uncached_tokens_per_s": batch * length / full, "speedup": full / cached})
    return out


def num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def markdown(s: dict) -> str:
    """The summary as a short page: what ran where, then a table per measurement."""
    lines = [f"# GPU text session ({s['when']})", "",
             f"Device: {s['gpu'] or s['device']} (torch {s['torch']}). Corpus: {s['corpus']}. Budget: "
             f"{s['minutes']} min of training for both presets, one after the other. Overrides: "
             f"{' '.join(s['overrides']) or 'none'}. Made by `python bench/gpu_session.py text`.", "",
             "| model | preset | params | precision | steps | batch x length | train s | tokens/s | probe tokens/s "
             "| logged tokens/s | matmul share | peak GiB | final loss |", "|---" * 13 + "|"]
    for preset, r in s["runs"].items():
        if "tokens_per_s" not in r:
            continue
        asked = f" (preset's {r['batch_size_asked']}: out of memory)" if "batch_size_asked" in r else ""
        lg = {k: f"{v:,.0f}" if k == "tokens_per_s" else f"{v:.3f}" for k, v in r["logged"].items()}
        lines.append(f"| {r['label']} | {preset} | {r['parameters'] or 0:,} | {r['precision']} | {r['steps']} | "
                     f"{r['batch_size']} x {r['length']}{asked} | {r['train_s']:.0f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['probe_tokens_per_s']:,.0f} | {lg.get('tokens_per_s', '-')} | "
                     f"{lg.get('matmul_share', '-')} | "
                     f"{r.get('peak_gpu_gib', '-')} | {r['final_train_metrics'].get('loss', float('nan')):.4f} |")
    lines += ["", "| model | split | sequences x draws | BPC (NELBO) | ± 1.96 se | latent KL | z gain |",
              "|---" * 7 + "|"]
    for preset, r in s["runs"].items():
        if "score" in r:
            c = r["score"]
            lines.append(f"| {r['label']} | {c['split']} | {c['sequences']} x {c['draws']} | {c['bpc']:.4f} | "
                         f"{1.96 * c['bpc_stderr']:.4f} | {num(c.get('latent_kl'))} | {num(c.get('z_gain'))} |")
    lines += ["", "| model | steps / block | batch x length | cached samples/s | cached tokens/s | uncached samples/s "
              "| uncached tokens/s | speed-up |", "|---" * 8 + "|"]
    for preset, r in s["runs"].items():
        for c in r.get("cache", []):
            lines.append(f"| {r['label']} | {c['steps_per_block']} | {c['batch']} x {c['length']} | "
                         f"{c['cached_samples_per_s']:.2f} | {c['cached_tokens_per_s']:,.0f} | "
                         f"{c['uncached_samples_per_s']:.2f} | {c['uncached_tokens_per_s']:,.0f} | "
                         f"{c['speedup']:.2f}x |")
    if s["errors"]:
        lines += ["", "Errors:", ""] + [f"- {k}: {v}" for k, v in s["errors"].items()]
    return "\n".join(lines) + "\n"


def write(out: Path, s: dict) -> None:
    (out / "gpu-text.json").write_text(json.dumps(s, indent=1))
    (out / "gpu-text.md").write_text(markdown(s))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--minutes", type=float, default=4.0, help="training time, both presets together [4]")
    ap.add_argument("--out", type=Path, required=True, help="where the summary goes (the device tool's $OUT)")
    ap.add_argument("--text-file", type=Path, help="the text to train on where text8 is not cached")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "gpu-text", help="run directories [runs/gpu-text]")
    ap.add_argument("--presets", default=PRESETS, help=f"comma-separated text presets [{PRESETS}]")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="override for both presets, e.g. train.batch_size=256")
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu: training, scoring and generation [auto]")
    ap.add_argument("--probe-steps", type=int, default=20, help="steps timed in each probe [20]")
    ap.add_argument("--eval-sequences", type=int, default=256, help="test sequences scored per model [256]")
    ap.add_argument("--draws", type=int, default=4, help="draws of the times per sequence [4]")
    ap.add_argument("--gen-batch", type=int, default=16, help="samples generated at once in the cache timing [16]")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the cache timing [3]")


def run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    presets = args.presets.split(",")
    if args.minutes <= 0 or min(args.probe_steps, args.eval_sequences, args.draws, args.gen_batch, args.rounds) < 1:
        ap.error("--minutes must be > 0 and --probe-steps, --eval-sequences, --draws, --gen-batch, --rounds >= 1")
    try:
        text8.zip_path()
    except ImportError:  # no platformdirs (the device machine): the cache must be named
        ap.error("set VMD_CACHE_DIR (e.g. .device-cache): platformdirs is not installed to find the user cache")
    try:
        what, overrides = corpus(args.text_file)
        overrides += [] if args.device == "auto" else [f"device.device={args.device}"]
        overrides += args.overrides
        cfgs = [C.load(p, overrides=overrides) for p in presets]
        if any(c.task.name != "text" for c in cfgs):
            raise ConfigError(f"--presets takes text presets; got {args.presets!r}")
        device = resolve_device(cfgs[0].device.device)
    except VmdError as e:
        ap.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.runs / datetime.now().strftime("%Y%m%d-%H%M%S")  # a rerun on the same machine starts afresh
    s = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": str(device),
         "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "torch": torch.__version__,
         "python": platform.python_version(), "corpus": what, "minutes": args.minutes, "overrides": overrides,
         "command": " ".join(sys.argv), "runs": {p: {} for p in presets}, "seconds": {}, "errors": {}}
    save = functools.partial(write, args.out)
    print(f"corpus: {what}; device: {s['gpu'] or device}", flush=True)
    t0, share = time.time(), 60 * args.minutes / len(presets)
    for i, (preset, cfg) in enumerate(zip(presets, cfgs)):
        r = stage(s, save, f"{preset} training", train, cfg, preset, overrides, runs / preset,
                  t0 + share * (i + 1), args.probe_steps)
        s["runs"][preset].update(r or {})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    trained = [p for p in presets if checkpoint.has_checkpoint(runs / p)]
    for preset in trained:  # both scores before either timing: what matters most comes back first
        found = stage(s, save, f"{preset} BPC", score, runs / preset, device, "test", args.eval_sequences,
                      args.draws)
        if found is not None:
            s["runs"][preset]["score"] = found
    for preset in trained:
        s["runs"][preset]["cache"] = stage(s, save, f"{preset} cache", cache_speed, runs / preset, device,
                                           args.gen_batch, args.rounds) or []
        save(s)
    print(markdown(s), flush=True)
    if s["errors"]:
        raise SystemExit(1)
