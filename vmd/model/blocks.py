"""The block structure of block diffusion (BD3-LM, method.md §3), in one place for the model and
the sampler.

A sequence of ``L`` tokens is cut into ``L / B`` blocks of ``B``. Training runs the denoiser once
over ``xt ⊕ x0`` (length 2L, both halves at positions 0..L-1) with this attention pattern:

- a noisy token attends to the noisy tokens of its own block (bidirectional) and to the clean
  tokens of every earlier block;
- a clean token attends to the clean tokens of its own block and of every earlier block.

So the noisy block b sees exactly what generating block b sees: its own partly masked tokens and
the clean prefix x0^{<b}. ``B = L`` is one block (plain masked diffusion), ``B = 1`` is
autoregressive. A committed prefix can be cached because nothing clean ever attends to a later
block or to a noisy token.
"""

from __future__ import annotations

import torch


def block_ids(length: int, block_size: int, device=None) -> torch.Tensor:
    """(length,) the block of each position."""
    return torch.arange(length, device=device) // block_size


def training_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """(2L, 2L) bool, True where a query (row) may attend to a key (column); rows and columns
    0..L-1 are the noisy half, L..2L-1 the clean half."""
    b = block_ids(length, block_size, device)
    same = b[:, None] == b[None, :]
    earlier = b[:, None] > b[None, :]
    up_to = b[:, None] >= b[None, :]
    top = torch.cat([same, earlier], dim=1)  # noisy queries: own block noisy | earlier blocks clean
    bottom = torch.cat([torch.zeros_like(same), up_to], dim=1)  # clean queries: never noisy | blocks up to own
    return torch.cat([top, bottom], dim=0)


def causal_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """(L, L) bool: the clean half's own pattern, each token attending to its block and the earlier
    ones (a block VMD's encoder reads x0 so)."""
    b = block_ids(length, block_size, device)
    return b[:, None] >= b[None, :]


def positions(length: int, device=None) -> torch.Tensor:
    """(2L,) the position of each token of ``xt ⊕ x0``: both halves at 0..L-1."""
    return torch.arange(2 * length, device=device) % length
