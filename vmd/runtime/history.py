"""``RUN/metrics.jsonl``: every logged window of training, one JSON object per line.

Each line has ``step`` (the last step of the window), ``steps`` (how many steps it averages),
every loss term of ``vmd.diffusion.METRICS``, ``lr``, ``beta``, ``steps_per_s`` and ``elapsed_s``
(training seconds so far), plus validation metrics where a task computes them. Lines are
appended as training logs them. A resumed run first drops every line past the step of the
checkpoint it resumes from (a run killed after a log but before the next checkpoint repeats
those steps), and a torn last line; so the file never holds a step twice or misses one.
"""

from __future__ import annotations

import json
from pathlib import Path

from vmd.runtime.atomic import atomic_write
from vmd.runtime.errors import CheckpointError
from vmd.runtime.runlock import os_reason

HISTORY_FILE = "metrics.jsonl"


def read(run_dir: Path) -> list[dict]:
    """The whole lines of a run's history (a torn or garbled line is skipped)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def truncate_after(run_dir: Path, step: int) -> None:
    """Keep only the whole lines up to ``step`` (rewritten atomically, only when something goes)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; move it away to resume")
    text = path.read_text(errors="replace")
    rows = [r for r in read(run_dir) if r["step"] <= step]
    kept = "".join(json.dumps(r) + "\n" for r in rows)
    if kept != text:
        try:
            atomic_write(path, kept.encode())
        except OSError as e:
            raise CheckpointError(f"cannot rewrite {path}: {os_reason(e)}") from None


def append(run_dir: Path, row: dict) -> None:
    path = Path(run_dir) / HISTORY_FILE
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {os_reason(e)}") from None
