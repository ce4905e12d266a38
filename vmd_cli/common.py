"""What the commands share: the Typer app they register on, the option help texts, and loading a
model by any name with the labels that describe it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vmd import config as C
from vmd.models import NAMES_HELP
from vmd_cli.console import fail

app = typer.Typer(
    help="Masked diffusion (MDM) and variational masked diffusion (VMD) on discrete data.\n\n"
    "Examples:\n\n"
    "  vmd train --preset synthetic-2tok-vmd\n\n"
    "  vmd eval runs/synthetic-2tok-vmd --nfe 1\n\n"
    "  vmd sample runs/synthetic-2tok-vmd -n 8\n\n"
    "  vmd solve puzzles.txt --nfe 10",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def default_out(name: str) -> Path:
    """runs/NAME, or runs/NAME-2, -3, ... so that no earlier run is overwritten."""
    base = Path("runs") / name
    path, i = base, 2
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def check_z_policy(cfg: C.Config, model, z_policy: Optional[str]) -> None:
    """--z-policy chooses when a VMD's z is drawn: refused, like any option that does not apply, for a
    model without one (BD3, MDM) or a mixture, whose class is drawn at every step by definition."""
    if z_policy is not None and not model.has_latent:
        what = "draws its class at every step" if model.mixture else "has no latent z"
        fail(f"--z-policy applies to a VMD's latent z; {model_label(cfg, model)} {what}")


def sample_config(cfg: C.Config, **options) -> C.SampleConfig:
    """The run's sampling settings with the command-line options on top, validated like a preset."""
    sets = [f"sample.{k}={v}" for k, v in options.items() if v is not None]
    data = C.apply_overrides({"sample": C.to_dict(cfg)["sample"]}, sets)
    return C.from_dict(data).sample


def parse_ints(text: Optional[str], option: str) -> Optional[list[int]]:
    """"1,2,5" -> [1, 2, 5]; None stays None; anything else is a one-line error."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{option} takes integers separated by commas, got {text!r}")
    if not values or min(values) < 1:
        fail(f"{option} values must be integers >= 1, got {text!r}")
    return values


def model_label(cfg: C.Config, model) -> str:
    """What a model is, as papers name it: MDM, VMD, AR, BD3 block B or block VMD block B."""
    if model.block_size == 1:
        return "AR"
    kind = f" ({model.mixture}-class mixture)" if model.mixture else " (z held at 0)" if model.constant_z else ""
    if model.blocks > 1:
        return f"{'block VMD' if cfg.method == 'vmd' else 'BD3'} block {model.block_size}{kind}"
    return cfg.method.upper() + kind


def task_label(cfg: C.Config) -> str:
    return f"synthetic/{cfg.task.kind}" if cfg.task.name == "synthetic" else cfg.task.name


MODEL_HELP = f"The model: {NAMES_HELP}."
GENERATION_OPTIONS = ("--length", "--steps-per-block")  # the names vmd.blockwise.check_generation says
STEPS_PER_BLOCK_HELP = ("Text: denoising steps per block, 1 to the block size \\[default: the run's sample.nfe, at "
                        "most the block size].")
LENGTH_HELP = ("Text: tokens per sample, prompt included \\[default: the model's length]; past it a model with "
               "rotary positions slides its cache.")


def load_any(source: str, device: Optional[str], with_task: bool = False):
    """A model by any name a command takes (``vmd.models.resolve``): (model on its device, config,
    step, device), and with ``with_task`` the run's task (rebuilt from what the run stored)."""
    from vmd.checkpoint import load_run
    from vmd.models import resolve
    from vmd.runtime.devices import resolve_device

    model, cfg, step, task = load_run(resolve(source), "cpu")
    dev = resolve_device(device or cfg.device.device)
    return (model.to(dev), cfg, step, dev) + ((task,) if with_task else ())
