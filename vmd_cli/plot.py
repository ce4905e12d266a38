"""``vmd plot``: a run's training curves from its ``metrics.jsonl``, several runs overlaid, as a PNG
(matplotlib, an optional extra), or with ``--last`` the newest logged line of each as a table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from vmd_cli.common import app
from vmd_cli.console import fail, friendly, out

MARK = "vmd plot"  # in each PNG's metadata: a file with it is ours to replace, any other is not

# (key in metrics.jsonl, panel title); a panel is drawn where some run logged the key
PANELS = (("bits_per_token", "training bound (bits per token)"), ("valid_bpt", "validation bound (bits per token)"),
          ("latent_kl", "latent KL (nats per sequence)"), ("tokens_per_s", "training tokens per second"))


def _histories(runs: list[Path]) -> dict[str, list[dict]]:
    from vmd.runtime import history

    found = {}
    short = [run.resolve().name for run in runs]
    for run, name in zip(runs, short):
        if not run.is_dir():
            fail(f"{run} is not a run directory")
        rows = history.read(run)
        if not rows:
            fail(f"{run} has no training history ({history.HISTORY_FILE} is missing or empty)")
        found[name if short.count(name) == 1 else str(run)] = rows  # the folder's name, or its path where two share it
    return found


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [s for s, _ in pts], [v for _, v in pts]


def draw(found: dict[str, list[dict]], path: Path) -> list[str]:
    """Write the PNG; returns the titles of the panels drawn."""
    try:
        import matplotlib
    except ImportError:
        fail("vmd plot draws with matplotlib, which is not installed: pip install 'vmd[plot]' (or matplotlib); "
             "--last needs nothing more")
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    panels = [(key, title) for key, title in PANELS
              if any(_series(rows, key)[1] and (key != "latent_kl" or any(_series(rows, key)[1]))
                     for rows in found.values())]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, (key, title) in zip(axes[:, 0], panels):
        for name, rows in found.items():
            steps, values = _series(rows, key)
            if values:
                ax.plot(steps, values, label=name, linewidth=1.2, marker="." if len(values) < 30 else None)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110, metadata={"Software": MARK})
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror or e}")
    finally:
        plt.close(fig)
    return [title for _, title in panels]


@app.command(epilog="Examples:\n\n"
             "  vmd plot runs/shakespeare-block4\n\n"
             "  vmd plot runs/bd3 runs/vmd --out curves.png\n\n"
             "  vmd plot runs/* --last")
@friendly
def plot(
    runs: List[Path] = typer.Argument(..., metavar="RUN...", help="Run directories (their metrics.jsonl)."),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="The PNG to write \\[default: RUN/curves.png "
                                            "for one run, curves.png for several]."),
    last: bool = typer.Option(False, "--last", help="Print the newest logged line of each run instead (no PNG)."),
):
    """Training curves of one or more runs: the training bound, validation, the latent's KL and
    tokens/s against the step, the runs overlaid with their names; or --last, a table in the terminal."""
    found = _histories(runs)
    if last:
        table = Table(title="the newest logged line of each run")
        for col in ("run", "step", "bits/token", "valid", "KL", "tokens/s", "elapsed"):
            table.add_column(col, justify="left" if col == "run" else "right")
        for name, rows in found.items():
            r = rows[-1]

            def cell(key, fmt="{:.3f}"):
                v = r.get(key)
                return fmt.format(v) if isinstance(v, (int, float)) else "-"

            table.add_row(name, str(r["step"]), cell("bits_per_token"), cell("valid_bpt"), cell("latent_kl"),
                          cell("tokens_per_s", "{:,.0f}"), cell("elapsed_s", "{:,.0f} s"))
        out.print(table)
        return
    path = out_file or (runs[0] / "curves.png" if len(runs) == 1 else Path("curves.png"))
    if path.exists() and (not path.is_file() or MARK.encode() not in path.read_bytes()[:4096]):
        fail(f"{path} exists and was not written by vmd plot: give another --out")
    panels = draw(found, path)
    out.print(f"wrote {path}: {', '.join(panels)}; {len(found)} run{'s' if len(found) > 1 else ''}", highlight=False)
