"""Sudoku accuracy tables (share of puzzles solved per strategy and NFE, and solving speed), and
why solves fail: which broken rules come from cells filled in the same step."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from vmd.sampling import DrawOnce, Step, generate
from vmd.schedule import make_schedule
from vmd.sudoku.grid import UNITS
from vmd.sudoku.grid import solved_mask
from vmd.sudoku.solve import default_batch_size, puzzle_generators, solve
from vmd.tasks.sudoku import to_digits, to_tokens

# every pair of cells that share a row, column or box, once: (810, 2)
_PAIRS = torch.tensor(sorted({(a, b) for unit in UNITS for a in unit for b in unit if a < b}))

DEFAULT_NFES = (1, 2, 3, 5, 10, 20, 50)
DEFAULT_STRATEGIES = ("random", "top-prob", "top-margin")


def accuracy_table(model, puzzles: torch.Tensor, *, nfes=DEFAULT_NFES, strategies=DEFAULT_STRATEGIES,
                   restarts: int = 0, batch_size: int | None = None, seed: int = 0, z_policy: str = "once",
                   schedule: str = "linear", device="cpu", per_puzzle: bool = False,
                   on_batch: Callable[[int], None] | None = None) -> dict:
    """{"accuracy": {strategy: {nfe: share solved}}, "puzzles_per_s": {strategy: {nfe: rate}}}; with
    ``per_puzzle`` also "solved": {strategy: {nfe: (n,) bool}}, for comparing two models puzzle by puzzle."""
    acc: dict[str, dict[int, float]] = {}
    rate: dict[str, dict[int, float]] = {}
    solved: dict[str, dict[int, torch.Tensor]] = {}
    for strategy in strategies:
        acc[strategy], rate[strategy], solved[strategy] = {}, {}, {}
        for nfe in nfes:
            t0 = time.perf_counter()
            result = solve(model, puzzles, nfe=nfe, strategy=strategy, restarts=restarts, batch_size=batch_size,
                           seed=seed, z_policy=z_policy, schedule=schedule, device=device, on_batch=on_batch)
            seconds = time.perf_counter() - t0
            acc[strategy][nfe] = float(result.solved.double().mean())
            rate[strategy][nfe] = puzzles.shape[0] / max(seconds, 1e-9)
            solved[strategy][nfe] = result.solved
    return {"accuracy": acc, "puzzles_per_s": rate, **({"solved": solved} if per_puzzle else {})}


def paired_difference(solved_a: torch.Tensor, solved_b: torch.Tensor) -> dict:
    """Two models on the same puzzles: how many only A solved, only B solved, and the exact two-sided
    McNemar p-value (a binomial test on those discordant puzzles): how often a gap at least this
    large arises between two equally good solvers."""
    only_a = int((solved_a & ~solved_b).sum())
    only_b = int((solved_b & ~solved_a).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "p": min(1.0, 2 * tail)}


def clash_kinds(grids: torch.Tensor, filled_at: torch.Tensor, puzzles: torch.Tensor) -> dict[str, int]:
    """Sort the unsolved grids by the rules they break. ``filled_at``: (n, 81) the step that filled
    each cell, 0 for a given. ``same_step``: every pair of cells with the same digit in a row,
    column or box was filled in one step, the error a latent shared by one step's cells is meant
    to prevent. ``across_steps``: some pair was not (a cell contradicts a given or an earlier cell)."""
    a, b = _PAIRS[:, 0], _PAIRS[:, 1]
    clash = grids[:, a] == grids[:, b]
    same = clash & (filled_at[:, a] == filled_at[:, b]) & (filled_at[:, a] > 0)
    failed = ~solved_mask(grids, puzzles)
    across = failed & (clash & ~same).any(1)
    return {"failed": int(failed.sum()), "same_step": int((failed & same.any(1) & ~across).sum()),
            "across_steps": int(across.sum())}


@torch.no_grad()
def _solve_once(model, puzzles: torch.Tensor, *, nfe: int, strategy: str, z_policy, schedule: str,
                batch_size: int | None, device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One argmax solve of every puzzle in batches, as ``solve`` without restarts, with its draws
    (``puzzle_generators``): (grids, filled_at), ``filled_at`` the step that filled each cell (0 for a
    given). ``z_policy``: a name, or a function of a batch's slice that returns a policy object."""
    batch_size = batch_size or default_batch_size(device)
    sched = make_schedule(schedule)
    grids, filled_at = [], []
    for lo in range(0, puzzles.shape[0], batch_size):
        rows = slice(lo, lo + batch_size)
        filled = torch.zeros(puzzles[rows].shape, dtype=torch.long, device=device)

        def keep(step: Step) -> None:
            filled[step.revealed] = step.index

        x = generate(model, to_tokens(puzzles[rows]).to(device), nfe=nfe, strategy=strategy, temperature=0.0,
                     z_policy=z_policy if isinstance(z_policy, str) else z_policy(rows), schedule=sched,
                     generator=puzzle_generators(puzzles[rows], seed), callback=keep)
        grids.append(to_digits(x).cpu())
        filled_at.append(filled.cpu())
    return torch.cat(grids), torch.cat(filled_at)


def failure_kinds(model, puzzles: torch.Tensor, *, nfe: int, strategy: str = "top-margin", seed: int = 0,
                  z_policy: str = "once", schedule: str = "linear", batch_size: int | None = None,
                  device="cpu") -> dict[str, int]:
    """Solve once by argmax (as ``solve`` without restarts) and count the failures by ``clash_kinds``."""
    grids, filled_at = _solve_once(model, puzzles, nfe=nfe, strategy=strategy, z_policy=z_policy, schedule=schedule,
                                   batch_size=batch_size, device=device, seed=seed)
    return clash_kinds(grids, filled_at, puzzles)


class KnownSolution(DrawOnce):
    """z from the encoder given the true solution and the current mask, before every step: the
    most the latent could tell the denoiser. Solving with it bounds what a better prior could
    gain; it is a diagnostic, not a solver (it needs the answer)."""

    def __init__(self, solutions: torch.Tensor):
        self.x0 = solutions

    def start(self, model, x, generator):
        return model.encode(self.x0, x == model.mask_id).mean

    def step(self, model, x, z, logits, generator):
        return self.start(model, x, generator)


def known_solution_accuracy(model, puzzles: torch.Tensor, solutions: torch.Tensor, *, nfe: int,
                            strategy: str = "top-margin", schedule: str = "linear", batch_size: int | None = None,
                            device="cpu") -> float:
    """Share of puzzles a VMD solves by argmax when z comes from ``KnownSolution``."""
    grids, _ = _solve_once(model, puzzles, nfe=nfe, strategy=strategy, schedule=schedule, batch_size=batch_size,
                           device=device, z_policy=lambda rows: KnownSolution(to_tokens(solutions[rows]).to(device)))
    return float(solved_mask(grids, puzzles).double().mean())
