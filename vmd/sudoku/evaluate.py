"""Sudoku accuracy tables: share of puzzles solved per strategy and NFE, and solving speed."""

from __future__ import annotations

import time
from typing import Callable

import torch

from vmd.sudoku.solve import solve

DEFAULT_NFES = (1, 2, 3, 5, 10, 20, 50)
DEFAULT_STRATEGIES = ("random", "top-prob", "top-margin")


def accuracy_table(model, puzzles: torch.Tensor, *, nfes=DEFAULT_NFES, strategies=DEFAULT_STRATEGIES,
                   restarts: int = 0, batch_size: int = 256, seed: int = 0, z_policy: str = "once",
                   schedule: str = "linear", device="cpu",
                   on_batch: Callable[[int], None] | None = None) -> dict:
    """{"accuracy": {strategy: {nfe: share solved}}, "puzzles_per_s": {strategy: {nfe: rate}}}."""
    acc: dict[str, dict[int, float]] = {}
    rate: dict[str, dict[int, float]] = {}
    for strategy in strategies:
        acc[strategy], rate[strategy] = {}, {}
        for nfe in nfes:
            t0 = time.perf_counter()
            result = solve(model, puzzles, nfe=nfe, strategy=strategy, restarts=restarts, batch_size=batch_size,
                           seed=seed, z_policy=z_policy, schedule=schedule, device=device, on_batch=on_batch)
            seconds = time.perf_counter() - t0
            acc[strategy][nfe] = float(result.solved.double().mean())
            rate[strategy][nfe] = puzzles.shape[0] / max(seconds, 1e-9)
    return {"accuracy": acc, "puzzles_per_s": rate}
