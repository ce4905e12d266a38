"""What the bench scripts share: results pages whose hand-written part survives a re-run of the
script that makes them, and the plain matmul rate that speeds are measured against."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch


def matmul_flops(n: int = 1024, reps: int = 20) -> float:
    """FLOP/s of a plain fp32 n x n matmul on the CPU, the yardstick of the speed tables."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def write_keeping_hand(out: Path, generated: str, marker: str) -> None:
    """Write ``generated`` to ``out``, followed by the old file's text from the heading
    ``marker`` on, if it has one: a reading written by hand (check that it still holds)."""
    old = out.read_text() if out.exists() else ""
    kept = "\n" + old[old.index(marker):] if marker in old else ""
    out.write_text(generated + kept)


def write_sections(out: Path, title: str, sections: dict[str, str], marker: str) -> None:
    """Replace the ``## heading`` sections of ``out`` named in ``sections`` (heading -> body), keep
    its other sections in their order (new ones go after them), and keep the hand-written part
    from the heading ``marker`` on at the end: several bench runs, each making some sections."""
    old = out.read_text() if out.exists() else ""
    hand = old[old.index(marker):] if marker in old else ""
    body = old[: old.index(marker)] if marker in old else old
    kept: dict[str, str] = {}
    for part in body.split("\n## ")[1:]:
        heading, _, text = part.partition("\n")
        kept[heading.strip()] = text.strip("\n")
    kept.update({h: b.strip("\n") for h, b in sections.items()})
    text = f"# {title}\n" + "".join(f"\n## {h}\n\n{b}\n" for h, b in kept.items())
    out.write_text(text + ("\n" + hand if hand else ""))


def made_by(script: str) -> str:
    """The line that says which command made a results section, where, and with which torch."""
    cpu = platform.processor() or platform.machine()
    return (f"Made by `python {script} {' '.join(sys.argv[1:])}` on {cpu}, {torch.get_num_threads()} torch "
            f"threads, torch {torch.__version__}.")
