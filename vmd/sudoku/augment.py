"""Validity-preserving Sudoku augmentation, batched on tensors.

Each grid gets its own random symmetry: relabel the digits, permute the three bands and the
rows inside each band, the three stacks and the columns inside each stack, and transpose
with probability one half. Blanks (0) stay blank. Passing a puzzle and its solution together
applies the same symmetry to both.
"""

from __future__ import annotations

import torch


def _line_order(n: int, generator) -> torch.Tensor:
    """(n, 9) row (or column) orders that keep the three bands (stacks) together."""
    bands = torch.rand(n, 3, generator=generator).argsort(1)
    within = torch.rand(n, 3, 3, generator=generator).argsort(2)
    return (bands[:, :, None] * 3 + within).reshape(n, 9)


def augment(*grids: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """The same random symmetry per row of each (n, 81) tensor of digits 0-9 (0 blank)."""
    n = grids[0].shape[0]
    rows = _line_order(n, generator)[:, :, None].expand(n, 9, 9)
    cols = _line_order(n, generator)[:, None, :].expand(n, 9, 9)
    flip = (torch.rand(n, generator=generator) < 0.5)[:, None, None]
    relabel = torch.cat([torch.zeros(n, 1, dtype=torch.long), torch.rand(n, 9, generator=generator).argsort(1) + 1], 1)
    out = []
    for g in grids:
        g = g.long().view(n, 9, 9).gather(1, rows).gather(2, cols)
        g = torch.where(flip, g.transpose(1, 2), g).reshape(n, 81)
        out.append(relabel.gather(1, g))
    return tuple(out)
