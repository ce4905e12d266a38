"""Results pages whose hand-written part survives a re-run of the script that makes them."""

from __future__ import annotations

from pathlib import Path


def write_keeping_hand(out: Path, generated: str, marker: str) -> None:
    """Write ``generated`` to ``out``, followed by the old file's text from the heading
    ``marker`` on, if it has one: a reading written by hand (check that it still holds)."""
    old = out.read_text() if out.exists() else ""
    kept = "\n" + old[old.index(marker):] if marker in old else ""
    out.write_text(generated + kept)
