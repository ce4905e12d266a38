"""Sudoku data sets: generated (and cached, keyed by their settings) or read from a file.

Generated sets are deterministic in their settings (count, givens range, seed): each chunk of
puzzles has its own seed, so the result does not depend on how many worker processes made
it. They are cached under the user cache directory (``platformdirs``; ``VMD_CACHE_DIR``
overrides it) as safetensors files of uint8 grids, written atomically, whose metadata holds
the settings and a sha256 of the tensors' bytes.

A cached file is used only if its settings and checksum match and every solution is a valid
grid that solves its puzzle with a givens count in range; otherwise it is treated as absent:
the set is made again and the file atomically replaced (the set is deterministic, so nothing
is lost), and the progress label says why. The cache directory is checked to be writable
before any set is made, so an unusable one is one DataError line, not minutes of lost work.

``progress(done, total, label)`` is the tasks' protocol (``vmd.tasks``): the label says what is
being made and where it goes, or which cached file is used.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
from pathlib import Path
from typing import Callable

import torch

from vmd.runtime.cache import cache_dir, read_checked, write_checked
from vmd.runtime.cache import check_writable as _check_writable
from vmd.runtime.errors import DataError
from vmd.sudoku.grid import Puzzle, read_puzzles, solved_mask
from vmd.sudoku.solver import make_puzzle, random_solution

CHUNK = 50
FORMAT_VERSION = "2"  # 2: settings and a checksum in the metadata (v1 files, without them, are not read)

Progress = Callable[[int, int, str], None]


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


def _leave_signals_to_the_parent() -> None:
    """Workers ignore Ctrl-C (a terminal sends it to every process of the job) and end quietly on
    SIGTERM: the parent alone reacts, ends them and reports one line, where each worker would print
    a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
        # a multiprocessing pool, not concurrent.futures': on Ctrl-C or an error it can be ended at
        # once (terminate), where an executor first finishes the chunks it has started
        pool = multiprocessing.Pool(workers, initializer=_leave_signals_to_the_parent)
        try:
            collect(pool.imap(_chunk, jobs))
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.close()
            pool.join()
    puzzles = torch.tensor([p for p, _ in pairs], dtype=torch.uint8)
    solutions = torch.tensor([s for _, s in pairs], dtype=torch.uint8)
    return puzzles, solutions


def _settings(n: int, min_givens: int, max_givens: int, seed: int) -> dict[str, str]:
    return {"format": FORMAT_VERSION, "n": str(n), "givens": f"{min_givens}-{max_givens}", "seed": str(seed)}


def _problem(puzzles: torch.Tensor, solutions: torch.Tensor, min_givens: int, max_givens: int) -> str | None:
    """What is wrong with a set's grids, or None: every solution a valid grid solving its puzzle,
    every puzzle's givens in range."""
    if not bool(solved_mask(solutions, puzzles).all()):
        return "a solution is not a valid grid solving its puzzle"
    givens = (puzzles > 0).sum(1)
    if int(givens.min()) < min_givens or int(givens.max()) > max_givens:
        return f"a puzzle's givens are outside {min_givens}-{max_givens}"
    return None


def _load_cached(path: Path, settings: dict[str, str], min_givens: int, max_givens: int):
    """(puzzles, solutions) from a cached file, or the reason it cannot be used."""
    n = int(settings["n"])
    got = read_checked(path, settings, {"puzzles": ((n, 81), torch.uint8), "solutions": ((n, 81), torch.uint8)},
                       lambda t: _problem(t["puzzles"], t["solutions"], min_givens, max_givens))
    return got if isinstance(got, str) else (got["puzzles"], got["solutions"])


def generated_set(n: int, min_givens: int, max_givens: int, seed: int = 0, workers: int | None = None,
                  progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` puzzles with unique solutions and ``min_givens``-``max_givens`` givens, and their
    solutions, as (n, 81) uint8 tensors (0 blank). ``min_givens = 81`` gives complete grids."""
    root = cache_dir()
    path = root / "sudoku" / f"v{FORMAT_VERSION}-n{n}-givens{min_givens}-{max_givens}-seed{seed}.safetensors"
    what = f"{n} Sudoku solution grids" if min_givens == 81 else f"{n} Sudoku puzzles ({min_givens}-{max_givens} givens)"
    settings = _settings(n, min_givens, max_givens, seed)
    label = f"generating {what} -> {path}"
    if path.exists():
        cached = _load_cached(path, settings, min_givens, max_givens)
        if not isinstance(cached, str):
            if progress:
                progress(n, n, f"using cached {what}: {path}")
            return cached
        label = f"regenerating {what} -> {path} (the cached file could not be used: {cached})"
    _check_writable(root, path.parent)
    workers = workers or min(os.cpu_count() or 1, 8)
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        progress(done[0], n, label)

    if progress:
        progress(0, n, label)
    try:
        puzzles, solutions = _generate(n, min_givens, max_givens, seed, workers, tick if progress else None)
    except ValueError as e:  # the generator could not reach the range
        raise DataError(str(e)) from None
    problem = _problem(puzzles, solutions, min_givens, max_givens)
    if problem:  # never cache a bad set
        raise DataError(f"the generated set is wrong ({problem}); this is a bug, please report it")
    write_checked(path, {"puzzles": puzzles, "solutions": solutions}, settings)
    return puzzles, solutions


def solution_grids(n: int, seed: int = 0, progress: Progress | None = None) -> torch.Tensor:
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
