"""Sudoku as a masked-diffusion task: 81 cells of 9 digits, the givens never masked.

Token ids 0-8 are the digits 1-9 and id 9 is [MASK]. Each cell's position is the sum of its
row's, column's and box's embeddings (``layout``). Training data comes from
``task.source`` (see ``vmd.config.TaskConfig``) and is made or loaded on first use, so
loading a model to solve puzzles never generates data.
"""

from __future__ import annotations

from typing import Callable

import torch

from vmd.config import TaskConfig
from vmd.sudoku import data as D
from vmd.sudoku.augment import augment
from vmd.sudoku.grid import to_line

DATA_SEED = 0  # the training pool is part of the task's identity, not of the run's seed


def sudoku_layout() -> torch.Tensor:
    cells = torch.arange(81)
    row, col = cells // 9, cells % 9
    box = (row // 3) * 3 + col // 3
    return torch.stack([row, 9 + col, 18 + box], 1)


def to_tokens(grids: torch.Tensor, mask_id: int = 9) -> torch.Tensor:
    """(n, 81) digits 0-9 (0 blank) -> token ids (digit - 1, blank -> [MASK])."""
    g = grids.long()
    return torch.where(g > 0, g - 1, torch.full_like(g, mask_id))


def to_digits(tokens: torch.Tensor, mask_id: int = 9) -> torch.Tensor:
    t = tokens.long()
    return torch.where(t == mask_id, torch.zeros_like(t), t + 1)


class SudokuTask:
    vocab = 9
    length = 81

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.layout = sudoku_layout()
        self._pool: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self, progress: Callable[[int, int, str], None] | None = None) -> None:
        """Make or load the training pool: (puzzles, solutions) as (n, 81) uint8 digits.
        ``progress(done, total, label)`` follows the making (see ``vmd.sudoku.data``)."""
        if self._pool is not None:
            return
        c = self.cfg
        if c.source == "file":
            self._pool = D.training_file(c.file)
        elif c.source == "puzzles":
            self._pool = D.generated_set(c.grids, c.min_givens, c.max_givens, DATA_SEED, progress=progress)
        else:
            grids = D.solution_grids(c.grids, DATA_SEED, progress=progress)
            self._pool = (grids, grids)

    def train_batch(self, n: int, generator=None):
        self.prepare()
        puzzles, solutions = self._pool
        idx = torch.randint(len(solutions), (n,), generator=generator)
        p, s = puzzles[idx], solutions[idx]
        if self.cfg.augment:
            p, s = augment(p, s, generator=generator)
        x0 = s.long() - 1
        given = None if self.cfg.source == "solutions" else p > 0
        return x0, given

    def state(self) -> dict[str, str]:
        """Nothing learned from data: the config alone rebuilds the task."""
        return {}

    def start(self, n: int):
        """Empty boards: ``vmd sample`` draws complete grids (puzzles go through vmd.sudoku.solve)."""
        return torch.full((n, 81), 9, dtype=torch.long), None

    def format(self, x: torch.Tensor) -> list[str]:
        return [to_line(row) for row in to_digits(x).tolist()]
