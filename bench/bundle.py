"""Ship trained Sudoku runs inside the package and record where they came from.

    python bench/bundle.py --vmd runs/sudoku-vmd-tiny --mdm runs/sudoku-mdm-tiny

Copies each run's model.safetensors (EMA weights, config and step in its header) to
vmd/models/sudoku-{vmd,mdm}.safetensors and writes docs/bundled-models.md: the preset the
run matches, steps, parameters, device, training time, versions, file size and SHA-256.
A model whose fp32 file is over the size limit (the GPU presets' VMD: 10.6M parameters,
40 MiB) is stored with fp16 weights instead, and says so; --half stores both that way.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
from datetime import date
from pathlib import Path

import torch
from safetensors import safe_open

from _docs import write_keeping_hand
from vmd import checkpoint, config as C

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MB = 25
HAND = "## How they were trained (written by hand"


def preset_of(run_dir: Path, cfg: C.Config) -> str:
    name = run_dir.name
    if name not in C.list_presets():
        return "its own config (see the file's header)"
    return f"`{name}` as bundled" if C.load(name) == cfg else f"`{name}` with changes"


def stored_half(path: Path) -> bool:
    with safe_open(str(path), framework="pt") as f:
        return any(f.get_slice(k).get_dtype() == "F16" for k in f.keys())


@torch.no_grad()
def logit_change(model, bundled: Path) -> float:
    """Largest change of the logits on 64 half-masked test inputs between the run's weights and the bundled file's."""
    copy = checkpoint.load_model(bundled)[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.mask_id, (64, model.length), generator=g)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.5, torch.full_like(x, model.mask_id), x)
    z = model.sample_z(x, torch.Generator().manual_seed(1))
    return float((model(x, z) - copy(x, z)).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vmd", type=Path, required=True)
    ap.add_argument("--mdm", type=Path, required=True)
    ap.add_argument("--half", action="store_true", help="store the weights as fp16 even where fp32 fits the limit")
    args = ap.parse_args()
    rows = []
    for name, run_dir in (("sudoku-vmd", args.vmd), ("sudoku-mdm", args.mdm)):
        model, cfg, step = checkpoint.load_model(run_dir)
        if cfg.task.name != "sudoku":
            raise SystemExit(f"{run_dir} is not a Sudoku run")
        src = run_dir / checkpoint.MODEL_FILE
        dst = ROOT / "vmd" / "models" / f"{name}.safetensors"
        checkpoint.export_model(src, dst, half=args.half or src.stat().st_size / 2**20 > LIMIT_MB)
        dtype = "fp16" if stored_half(dst) else "fp32"  # also fp16 where the run's own file is (bench/gpu_session.py)
        size = dst.stat().st_size / 2**20
        if size > LIMIT_MB:
            dst.unlink()
            raise SystemExit(f"{src} is {size:.1f} MB even in fp16, over the {LIMIT_MB} MB limit for a bundled model")
        shift = logit_change(model, dst)
        meta = checkpoint.read_meta(run_dir)
        rows.append((name, preset_of(run_dir, cfg), step, sum(p.numel() for p in model.parameters()), meta, size,
                     hashlib.sha256(dst.read_bytes()).hexdigest(), dtype))
        print(f"{dst}: {size:.1f} MB ({dtype}), step {step}; largest logit change {shift:.2e}")
    lines = ["# Bundled models", "",
             "`vmd solve` and `vmd play` use these two models when no `--model` is given. They ship inside the "
             "package as `vmd/models/sudoku-{vmd,mdm}.safetensors`: the EMA weights of a `vmd train` run, with the "
             "resolved config and the step in the file's header (no pickled code).", "",
             "| model | trained from | steps | parameters | device | training time | file | weights | SHA-256 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, preset, step, params, meta, size, sha, dtype in rows:
        minutes = float(meta.get("elapsed_s", float("nan"))) / 60
        lines.append(f"| {name} | {preset} | {step} | {params:,} | {meta.get('device', '?')} | {minutes:.0f} min | "
                     f"{size:.1f} MB | {dtype} | `{sha[:16]}...` |")
    versions = rows[0][4].get("versions", {})
    lines += ["", f"Bundled on {date.today()} by `python bench/bundle.py --vmd {args.vmd} --mdm {args.mdm}`; trained "
              f"with torch {versions.get('torch', '?')} on this repository's machine ({platform.machine()}, "
              f"{torch.get_num_threads()} CPU threads visible here). Accuracy: docs/results-sudoku.md."]
    write_keeping_hand(ROOT / "docs" / "bundled-models.md", "\n".join(lines) + "\n", HAND)
    print("wrote docs/bundled-models.md")


if __name__ == "__main__":
    main()
