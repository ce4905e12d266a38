"""Solving puzzles with a trained model: batched sampling, a batched checker, restarts.

``solve`` fills every puzzle in batches with the reverse process (method.md §4), checks each
result, and retries the failures (``restarts``, method.md §5) with fresh latent draws and a
perturbed unmasking order: all the retries of a batch run as one batch. The givens are
never changed by the sampler. On a CPU, batches are solved side by side, one per torch thread
(``solving_workers``). Each puzzle draws from its own random stream, fixed by the seed and the
puzzle's digits (``puzzle_generators``), so a puzzle's result depends on neither the batching,
nor how many batches run at once, nor where it stands in the input.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from vmd.rng import RowGenerators, sample_generators
from vmd.sampling import Step, generate
from vmd.schedule import make_schedule
from vmd.sudoku.grid import solved_mask  # noqa: F401 (imported from here too)
from vmd.tasks.sudoku import to_digits, to_tokens

# Retries rank the cells by log(score) + RESTART_ORDER_NOISE * Gumbel. A fresh z alone barely
# changes a collapsed VMD's solve, nor temperature-1 values an MDM's; a new order does (the
# 8000-step bundled models, top-margin, --restarts 4, NFE 10 on 100 hard puzzles: 81 -> 90%,
# where fresh z or temperature 1 gave 81-82%; 0.25 did worse than 0.5, and 1.0 and 2.0 did
# worse at easy NFE 2; docs/results-sudoku.md).
RESTART_ORDER_NOISE = 0.5


@dataclass
class SolveResult:
    grids: torch.Tensor  # (n, 81) digits, the last attempt for unsolved puzzles
    solved: torch.Tensor  # (n,) bool
    attempts: torch.Tensor  # (n,) sampling runs used (1 + restarts used)


def default_batch_size(device) -> int:
    """Puzzles per batch: 64 on a CPU, where a batch's activations then stay near the cores' caches
    (bundled models, 256 easy puzzles, NFE 10, docs/sudoku-history.md: on a 2-core AMD host 64 and
    128 tie and 256 is 1.17-1.37x slower; on a 2-core Xeon 64 is 1.07-1.12x 128's rate); 256 elsewhere."""
    return 64 if torch.device(device).type == "cpu" else 256


def puzzle_seed(seed: int, puzzle) -> int:
    """The seed of a puzzle's random stream: a hash of the solve's seed and the puzzle's 81 digits."""
    digest = hashlib.blake2b(f"{seed}:{''.join(map(str, puzzle))}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes up to 2^63 - 1 here


def puzzle_generators(puzzles: torch.Tensor, seed: int) -> RowGenerators:
    """One random stream per puzzle of (n, 81) ``puzzles``, fixed by ``seed`` and the puzzle: the
    same puzzle draws the same whichever batch it is in, wherever in the input, whichever worker
    solves it (the same puzzle twice in a file solves the same twice)."""
    return RowGenerators(torch.Generator().manual_seed(puzzle_seed(seed, p)) for p in puzzles.tolist())


@contextmanager
def solving_workers(device, batches: int, workers: int | None = None):
    """How many batches to solve at once, with the torch threads shared out among them meanwhile.

    On a CPU, one batch per torch thread, each op on one thread, beats one batch at a time with
    every op split over all threads: the model's ops are small (a batch of 64 puzzles is 5184
    rows of width 96), so a split op spends a share of its time starting and joining threads,
    and the sampler's steps between denoiser calls run on one thread anyway. On the 2-core Xeon,
    bundled models, 256 easy puzzles at NFE 10, with freed memory kept mapped (vmd/runtime/allocator.py,
    as the ``vmd`` command does; without it the workers' page faults can eat the VMD's gain):
    MDM 1.07x, VMD 1.08x the puzzles/s (docs/sudoku-history.md). Torch ops release the GIL, so
    Python threads suffice. torch's thread count is lowered for the whole process while they
    run, and restored. Elsewhere (a GPU queues the work): one."""
    threads = torch.get_num_threads()
    if workers is None:
        workers = threads if torch.device(device).type == "cpu" else 1
    workers = max(1, min(workers, batches))
    if workers == 1:
        yield 1
        return
    torch.set_num_threads(max(1, threads // workers))
    try:
        yield workers
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def solve(model, puzzles: torch.Tensor, *, nfe: int = 10, strategy: str = "top-margin", temperature: float = 0.0,
          restarts: int = 0, batch_size: int | None = None, seed: int = 0, z_policy: str = "once",
          schedule: str = "linear", device="cpu", workers: int | None = None,
          on_batch: Callable[[int], None] | None = None, streams: RowGenerators | None = None) -> SolveResult:
    """Solve (n, 81) puzzles (digits, 0 blank). Restarts redraw z for the failures (a VMD) and
    perturb the order in which cells are filled (``RESTART_ORDER_NOISE``), for an MDM too;
    values stay at ``temperature``. ``batch_size`` None: ``default_batch_size(device)``;
    ``workers`` None: ``solving_workers``'s choice. ``on_batch`` may be called from a worker thread.
    ``streams``: one random stream per row (``vmd.sampling.sample_generators``) in place of each
    puzzle's own (``puzzle_generators``), so that the same puzzle twice draws twice."""
    if batch_size is None:
        batch_size = default_batch_size(device)
    sched = make_schedule(schedule)
    n = puzzles.shape[0]
    grids = torch.zeros(n, 81, dtype=torch.long)
    solved = torch.zeros(n, dtype=torch.bool)
    attempts = torch.zeros(n, dtype=torch.long)

    def solve_batch(index: int) -> None:  # writes only its own rows of the results
        lo = index * batch_size
        p = puzzles[lo: lo + batch_size]
        gen = puzzle_generators(p, seed) if streams is None else streams.subset(torch.arange(lo, lo + p.shape[0]))
        todo = torch.arange(p.shape[0])
        for attempt in range(restarts + 1):
            x = generate(model, to_tokens(p[todo]).to(device), nfe=nfe, strategy=strategy, temperature=temperature,
                         z_policy=z_policy, schedule=sched, generator=gen.subset(todo),
                         order_noise=RESTART_ORDER_NOISE if attempt else 0.0)
            out = to_digits(x).cpu()
            ok = solved_mask(out, p[todo])
            grids[lo + todo] = out
            solved[lo + todo] = ok
            attempts[lo + todo] = attempt + 1
            todo = todo[~ok]
            if len(todo) == 0:
                break
        if on_batch:
            on_batch(p.shape[0])

    batches = range(-(-n // batch_size))
    with solving_workers(device, len(batches), workers) as k:
        if k == 1:
            for index in batches:
                solve_batch(index)
        else:
            pool = ThreadPoolExecutor(k, thread_name_prefix="vmd-solve")
            try:
                list(pool.map(solve_batch, batches))
            finally:  # on an error or Ctrl-C, drop the batches not started instead of solving them first
                pool.shutdown(wait=True, cancel_futures=True)
    return SolveResult(grids, solved, attempts)


@dataclass
class Completions:
    """What ``samples`` independent completions of one puzzle gave: ``valid`` of them were valid
    grids keeping its givens; ``distinct`` the different valid grids with how often each came,
    most frequent first; ``first`` the first sample (for a puzzle with no valid one)."""

    samples: int
    valid: int
    distinct: list[tuple[tuple[int, ...], int]]
    first: tuple[int, ...]


def sample_completions(model, puzzles: torch.Tensor, samples: int, *, seed: int = 0, on_batch=None,
                       **options) -> list[Completions]:
    """``samples`` completions of each of the (n, 81) ``puzzles``, each from its own random stream (and
    so its own z), fixed by ``seed``, the puzzle's place in ``puzzles`` and the sample's index: two
    equal puzzles draw differently, the same call twice gives the same. ``options`` as ``solve``'s."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    n = puzzles.shape[0]
    rows = puzzles.repeat_interleave(samples, dim=0)
    result = solve(model, rows, seed=seed, streams=sample_generators(seed, n * samples), on_batch=on_batch, **options)
    out = []
    for i in range(n):
        part = slice(i * samples, (i + 1) * samples)
        counts: dict[tuple[int, ...], int] = {}
        for grid, ok in zip(result.grids[part].tolist(), result.solved[part].tolist()):
            if ok:
                counts[tuple(grid)] = counts.get(tuple(grid), 0) + 1
        distinct = sorted(counts.items(), key=lambda kv: -kv[1])
        out.append(Completions(samples, int(result.solved[part].sum()), distinct, tuple(result.grids[i * samples].tolist())))
    return out


@dataclass
class Trace:
    """One puzzle solved step by step, for a UI: ``frames[k]`` is the grid after step k
    (``frames[0]`` the puzzle; a step that filled nothing repeats the grid before it, without a
    denoiser call), ``filled_at[i]`` the step that filled cell i (0 for a given)."""

    frames: list[list[int]]
    filled_at: list[int]
    z_drawn: bool

    @property
    def nfe(self) -> int:
        return len(self.frames) - 1


@torch.no_grad()
def trace(model, puzzle, *, nfe: int, strategy: str = "top-margin", seed: int = 0, z_policy: str = "once",
          schedule: str = "linear", temperature: float = 0.0, device="cpu") -> Trace:
    """Solve one puzzle (81 digits, 0 blank) and keep every intermediate grid: the first attempt of
    ``solve`` with this seed and temperature (the same draws). The seed fixes the latent draws of a
    VMD: a new seed is a new z."""
    p = torch.tensor([list(puzzle)])
    frames = [list(puzzle)]
    filled_at = [0 if v else -1 for v in puzzle]

    def keep(step: Step) -> None:
        frames.extend([frames[-1]] * (step.index - len(frames)))  # the steps skipped since the last
        frames.append(to_digits(step.x[0]).tolist())
        for i in step.revealed[0].nonzero().flatten().tolist():
            filled_at[i] = step.index

    generate(model, to_tokens(p).to(device), nfe=nfe, strategy=strategy, temperature=temperature, z_policy=z_policy,
             schedule=make_schedule(schedule), generator=puzzle_generators(p, seed), callback=keep)
    frames.extend([frames[-1]] * (nfe + 1 - len(frames)))
    return Trace(frames, filled_at, model.has_latent)
