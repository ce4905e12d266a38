"""Ship trained runs inside the package and record where they came from.

    python bench/bundle.py --vmd runs/sudoku-vmd-tiny --mdm runs/sudoku-mdm-tiny
    python bench/bundle.py --text-bd3 runs/shakespeare-bd3-block4 --text-vmd runs/shakespeare-block4 \
        --text-ar runs/shakespeare-ar --text-fewstep runs/shakespeare-block4-k1

Copies each run's model.safetensors (EMA weights, config, step and the task's vocabulary in its
header) to vmd/models/NAME.safetensors and writes docs/bundled-models.md: the preset the run
matches, steps, parameters, device, training time, versions, file size and SHA-256 (the rows of
models not given this time are kept). All bundled files together stay under the limit; a model
bundled with fp16 weights stays fp16 when bundled again.
A model whose fp32 file is over the size limit (the GPU presets' VMD: 10.6M parameters,
40 MiB) is stored with fp16 weights instead, and says so; --half stores both that way.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import re
from datetime import date
from pathlib import Path

import torch
from safetensors import safe_open

from _docs import write_keeping_hand
from vmd import checkpoint, config as C
from vmd.model.mixture import marginal_logits

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MB = 25  # all bundled models together
SLOTS = {"vmd": ("sudoku-vmd", "sudoku"), "mdm": ("sudoku-mdm", "sudoku"), "text_bd3": ("shakespeare-bd3-block4", "text"),
         "text_vmd": ("shakespeare-block4", "text"), "text_ar": ("shakespeare-ar", "text"),
         "text_fewstep": ("shakespeare-block4-k1", "text")}
HAND = "## How they were trained (written by hand"


def preset_of(run_dir: Path, cfg: C.Config) -> str:
    name = re.sub(r"-s\d+$", "", run_dir.name)  # bench/text.py's runs are PRESET-sSEED
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
    x0 = torch.randint(0, model.mask_id, (64, model.length), generator=g)
    x = torch.where(torch.rand(x0.shape, generator=g) < 0.5, torch.full_like(x0, model.mask_id), x0)
    clean = x0 if model.blocks > 1 else None  # a block model reads each block's clean prefix
    z = model.sample_z(x, torch.Generator().manual_seed(1), clean)
    return float((marginal_logits(model(x, z, clean)) - marginal_logits(copy(x, z, clean))).abs().max())


def old_rows(path: Path) -> dict[str, str]:
    """The table rows of the current page, by model name."""
    if not path.exists():
        return {}
    return {line.split("|")[1].strip(): line for line in path.read_text().splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in {n for n, _ in SLOTS.values()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for slot, (name, _) in SLOTS.items():
        ap.add_argument("--" + slot.replace("_", "-"), type=Path, help=f"the run to ship as {name}")
    ap.add_argument("--half", action="store_true", help="store the weights as fp16 even where fp32 fits the limit")
    args = ap.parse_args()
    page = ROOT / "docs" / "bundled-models.md"
    rows = old_rows(page)
    given = [(name, kind, getattr(args, slot)) for slot, (name, kind) in SLOTS.items() if getattr(args, slot)]
    if not given:
        ap.error("name at least one run to bundle")
    versions = {}
    for name, kind, run_dir in given:
        model, cfg, step = checkpoint.load_model(run_dir)
        if cfg.task.name != kind:
            raise SystemExit(f"{run_dir} is not a {kind} run")
        src = run_dir / checkpoint.MODEL_FILE
        dst = ROOT / "vmd" / "models" / f"{name}.safetensors"
        # fp16 where asked, where fp32 is over the limit, or where the bundled file already is (docs/bundled-models.md)
        half = args.half or src.stat().st_size / 2**20 > LIMIT_MB or (dst.exists() and stored_half(dst))
        checkpoint.export_model(src, dst, half=half)
        dtype = "fp16" if stored_half(dst) else "fp32"  # also fp16 where the run's own file is (gpu_session.py sudoku)
        size = dst.stat().st_size / 2**20
        shift = logit_change(model, dst)
        meta = checkpoint.read_meta(run_dir)
        versions = meta.get("versions", {})
        minutes = float(meta.get("elapsed_s", float("nan"))) / 60
        sha = hashlib.sha256(dst.read_bytes()).hexdigest()
        rows[name] = (f"| {name} | {preset_of(run_dir, cfg)} | {step} | {sum(p.numel() for p in model.parameters()):,} | "
                      f"{meta.get('device', '?')} | {minutes:.0f} min | {size:.1f} MB | {dtype} | `{sha[:16]}...` |")
        print(f"{dst}: {size:.1f} MB ({dtype}), step {step}; largest logit change {shift:.2e}")
    total_bytes = sum(p.stat().st_size for p in (ROOT / "vmd" / "models").glob("*.safetensors"))
    total = total_bytes / 2**20
    if total_bytes > LIMIT_MB * 10**6:  # the stricter reading of "MB": 25 million bytes (also under 25 MiB)
        raise SystemExit(f"the bundled models take {total_bytes:,} bytes together, over the {LIMIT_MB} MB limit")
    lines = ["# Bundled models", "",
             "Models that ship inside the package as `vmd/models/NAME.safetensors`: the EMA weights of a `vmd train` "
             "run, with the resolved config, the step and the task's vocabulary in the file's header (no pickled "
             "code). `vmd solve` and `vmd play` use the Sudoku ones when no model is given; `vmd sample` and "
             "`vmd play --text` the text ones; `vmd eval --samples` takes `shakespeare-ar` as its default judge.", "",
             "| model | trained from | steps | parameters | device | training time | file | weights | SHA-256 |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [rows[name] for name, _ in SLOTS.values() if name in rows]
    cmd = "python bench/bundle.py " + " ".join(f"--{s.replace('_', '-')} {getattr(args, s)}" for s in SLOTS
                                               if getattr(args, s))
    lines += ["", f"Last bundled on {date.today()} by `{cmd}`; trained with torch {versions.get('torch', '?')} on this "
              f"repository's machine ({platform.machine()}, {torch.get_num_threads()} CPU threads visible here). "
              f"Together {total:.1f} MiB ({total_bytes / 1e6:.1f} million bytes; limit {LIMIT_MB} million). Accuracy: docs/results-sudoku.md; text: "
              "docs/results-text.md."]
    write_keeping_hand(page, "\n".join(lines) + "\n", HAND)
    print(f"wrote {page}")


if __name__ == "__main__":
    main()
