"""Sudoku data sets: generated (and cached, keyed by their settings) or read from a file.

Generated sets are deterministic in their settings (count, givens range, seed): each chunk of
puzzles has its own seed, so the result does not depend on how many worker processes made
it. They are cached under the user cache directory (``platformdirs``; ``VMD_CACHE_DIR``
overrides it) as safetensors files of uint8 grids, written atomically.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from vmd.checkpoint import atomic_write
from vmd.errors import DataError
from vmd.sudoku.grid import Puzzle, read_puzzles
from vmd.sudoku.solver import make_puzzle, random_solution

CHUNK = 50
FORMAT_VERSION = "1"


def cache_dir() -> Path:
    env = os.environ.get("VMD_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("vmd"))


def _chunk(args) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    seed, index, count, min_givens, max_givens = args
    rng = random.Random(f"{seed}/{index}/{min_givens}-{max_givens}")
    if min_givens == 81:  # complete grids
        out = []
        for _ in range(count):
            s = random_solution(rng)
            out.append((s, s))
        return out
    return [make_puzzle(rng, min_givens, max_givens) for _ in range(count)]


def _generate(n: int, min_givens: int, max_givens: int, seed: int, workers: int,
              progress: Callable[[int], None] | None) -> tuple[torch.Tensor, torch.Tensor]:
    jobs = [(seed, i, min(CHUNK, n - i * CHUNK), min_givens, max_givens) for i in range((n + CHUNK - 1) // CHUNK)]
    pairs = []

    def collect(parts) -> None:
        for part in parts:
            pairs.extend(part)
            if progress:
                progress(len(part))

    if workers <= 1 or len(jobs) == 1:
        collect(map(_chunk, jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            collect(pool.map(_chunk, jobs))
    puzzles = torch.tensor([p for p, _ in pairs], dtype=torch.uint8)
    solutions = torch.tensor([s for _, s in pairs], dtype=torch.uint8)
    return puzzles, solutions


def _load_cached(path: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        data = load_file(str(path))
        puzzles, solutions = data["puzzles"], data["solutions"]
    except Exception as e:  # noqa: BLE001 - any failure to read is a corrupt cache
        raise DataError(f"corrupt data cache {path} ({type(e).__name__}); delete the file to regenerate it") from None
    if puzzles.shape != (n, 81) or solutions.shape != (n, 81) or int(solutions.min()) < 1 or int(solutions.max()) > 9:
        raise DataError(f"corrupt data cache {path} (wrong shape or values); delete the file to regenerate it")
    return puzzles, solutions


def generated_set(n: int, min_givens: int, max_givens: int, seed: int = 0, workers: int | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` puzzles with unique solutions and ``min_givens``-``max_givens`` givens, and their
    solutions, as (n, 81) uint8 tensors (0 blank). ``min_givens = 81`` gives complete grids."""
    from safetensors.torch import save

    path = cache_dir() / "sudoku" / f"v{FORMAT_VERSION}-n{n}-givens{min_givens}-{max_givens}-seed{seed}.safetensors"
    if path.exists():
        return _load_cached(path, n)
    workers = workers or min(os.cpu_count() or 1, 8)
    try:
        puzzles, solutions = _generate(n, min_givens, max_givens, seed, workers, progress)
    except ValueError as e:  # the generator could not reach the range
        raise DataError(str(e)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save({"puzzles": puzzles, "solutions": solutions}))
    return puzzles, solutions


def solution_grids(n: int, seed: int = 0, progress=None) -> torch.Tensor:
    """``n`` random complete grids (cached), the base of training on randomly masked solutions."""
    return generated_set(n, 81, 81, seed, progress=progress)[1]


def puzzles_to_tensors(puzzles: list[Puzzle]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Grids of a read file as (n, 81) tensors; solutions where the file has them all."""
    grid = torch.tensor([p.grid for p in puzzles], dtype=torch.uint8)
    if all(p.solution is not None for p in puzzles):
        return grid, torch.tensor([p.solution for p in puzzles], dtype=torch.uint8)
    return grid, None


def training_file(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A user's puzzle file (CSV or any grid format) with a solution for every puzzle."""
    puzzles = read_puzzles(path)
    missing = next((p for p in puzzles if p.solution is None), None)
    if missing is not None:
        raise DataError(f"{missing.source}: a training file needs a solution for every puzzle")
    return puzzles_to_tensors(puzzles)  # the reader has checked each solution against its puzzle
