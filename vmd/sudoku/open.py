"""Open Sudoku puzzles: boards whose completion is not unique, where the cells a sampler fills in
one step must agree on one of many answers (issue: the setting where z must choose).

Each set is named by the number of solutions its puzzles have, counted by the exact solver up to
a cap: ``empty`` (no givens), ``two`` (exactly 2), ``few`` (10 to 100), ``many`` (at least
1,000). A puzzle is made from a random complete grid by blanking cells in random order while the
count stays at or below the set's upper end, until it reaches the lower end; a blank that would
overshoot is put back and the next cell tried. Sets are deterministic in (name, n, seed), made
in chunks of their own seeds, and cached like the other sets (vmd/runtime/cache.py: settings and a
checksum in the file, checked before use).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import torch

from vmd.runtime.cache import cache_dir, check_writable, read_checked, write_checked
from vmd.runtime.errors import DataError
from vmd.sudoku.solver import count_solutions, random_solution

# name -> (fewest solutions, most solutions or None for no upper end): what the set's counts promise
OPEN_SETS = {"empty": (None, None), "two": (2, 2), "few": (10, 100), "many": (1000, None)}
FORMAT_VERSION = "1"

Progress = Callable[[int, int, str], None]


def describe(name: str) -> str:
    lo, hi = OPEN_SETS[name]
    if lo is None:
        return "empty boards"
    if hi is None:
        return f"puzzles with at least {lo:,} solutions"
    return f"puzzles with exactly {lo} solutions" if lo == hi else f"puzzles with {lo}-{hi} solutions"


def make_open_puzzle(rng: random.Random, lo: int, hi: int | None, attempts: int = 20) -> tuple[tuple[int, ...], int]:
    """A puzzle (81 ints, 0 blank) whose solution count is in [lo, hi] (hi None: at least lo), and
    that count (capped at lo where there is no upper end). First blanks cells while the solution
    stays unique (a minimal puzzle, about 22-26 givens), then goes on blanking, keeping the count at
    or below hi, until it reaches lo: few givens, and just as open as the set says."""
    cap = lo if hi is None else hi + 1
    for _ in range(attempts):
        grid = list(random_solution(rng))
        order = list(range(81))
        rng.shuffle(order)
        for i in order:  # to a minimal puzzle
            keep, grid[i] = grid[i], 0
            if count_solutions(grid, 2) > 1:
                grid[i] = keep
        for i in rng.sample(order, 81):
            if not grid[i]:
                continue
            keep, grid[i] = grid[i], 0
            n = count_solutions(grid, cap)
            if hi is not None and n > hi:
                grid[i] = keep  # too open: this cell stays given
                continue
            if n >= lo:
                return tuple(grid), n
    raise DataError(f"no puzzle with {lo}-{hi or 'more'} solutions after {attempts} grids")


def _chunk(name: str, seed: int, index: int, count: int) -> list[tuple[tuple[int, ...], int]]:
    lo, hi = OPEN_SETS[name]
    if lo is None:
        return [((0,) * 81, lo or 0)] * count
    rng = random.Random(f"open/{name}/{seed}/{index}")
    return [make_open_puzzle(rng, lo, hi) for _ in range(count)]


def open_set(name: str, n: int, seed: int = 0, progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` puzzles of the set ``name`` (``OPEN_SETS``) as (n, 81) uint8 digits (0 blank), and their
    solution counts (n,) as the solver counted them (capped: see ``make_open_puzzle``; 0 for empty
    boards, which have about 6.7e21)."""
    if name not in OPEN_SETS:
        raise DataError(f"unknown open set {name!r}; choose one of {', '.join(OPEN_SETS)}")
    root = cache_dir()
    path = root / "sudoku" / f"open-v{FORMAT_VERSION}-{name}-n{n}-seed{seed}.safetensors"
    settings = {"format": FORMAT_VERSION, "set": name, "n": str(n), "seed": str(seed)}
    what = f"{n} Sudoku {describe(name)}"
    shapes = {"puzzles": ((n, 81), torch.uint8), "counts": ((n,), torch.int32)}
    label = f"generating {what} -> {path}"
    if path.exists():
        got = read_checked(path, settings, shapes, lambda t: _problem(name, t["puzzles"], t["counts"]))
        if not isinstance(got, str):
            if progress:
                progress(n, n, f"using cached {what}: {path}")
            return got["puzzles"], got["counts"]
        label = f"regenerating {what} -> {path} (the cached file could not be used: {got})"
    check_writable(root, path.parent)
    pairs: list[tuple[tuple[int, ...], int]] = []
    chunk = 10
    for index in range(-(-n // chunk)):
        if progress:
            progress(len(pairs), n, label)
        pairs += _chunk(name, seed, index, min(chunk, n - index * chunk))
    puzzles = torch.tensor([p for p, _ in pairs], dtype=torch.uint8).view(n, 81)
    counts = torch.tensor([c for _, c in pairs], dtype=torch.int32)
    write_checked(path, {"puzzles": puzzles, "counts": counts}, settings)
    if progress:
        progress(n, n, label)
    return puzzles, counts


def _problem(name: str, puzzles: torch.Tensor, counts: torch.Tensor) -> str | None:
    """What is wrong with a set's stored counts, or None (the counts themselves are the solver's; the
    tests recount them)."""
    lo, hi = OPEN_SETS[name]
    if lo is None:
        return None if not puzzles.any() else "an empty board has a given"
    c = counts.long()
    if int(c.min()) < lo or (hi is not None and int(c.max()) > hi):
        return f"a count is outside {lo}-{hi or 'more'}"
    return None


def write_puzzles(puzzles: torch.Tensor, path: Path) -> None:
    """One 81-character line a puzzle ('.' blank), the format ``vmd solve`` reads."""
    path.write_text("".join("".join(str(v) if v else "." for v in row) + "\n" for row in puzzles.tolist()))
