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


def window_mask(length: int, block_size: int, window: int | None = None, past: int = 0, device=None) -> torch.Tensor:
    """(length, past + length) bool for committing ``length`` clean tokens (whole blocks) after
    ``past`` cached ones: each block attends to itself and to the clean tokens before it, at most
    ``window`` of them (None: all). ``window`` and ``past`` are multiples of the block size."""
    q = block_ids(length, block_size, device) + past // block_size
    k = block_ids(past + length, block_size, device)
    seen = q[:, None] >= k[None, :]
    if window is not None:
        seen &= k[None, :] >= q[:, None] - window // block_size
    return seen


class KVCache:
    """The keys and values of a committed clean prefix, per layer, for block-by-block generation
    (method.md §3): a clean token attends only to its own block and to earlier clean blocks, never
    to a noisy token or a later block, so its keys and values never change once its block is
    committed. A block's denoising steps then run the model on that block alone, attending to the
    cache and to itself.

    Each layer's keys and values live in one buffer (batch, heads, capacity, head_dim) allocated
    at the first use: a step writes its own after the cached ones and attends to that view, so no
    step copies the prefix. ``length`` counts the tokens committed so far (the position of the
    next one). With a ``window`` only the last ``window`` tokens are kept (whole blocks): a model
    whose positions are relative (rotary) can so generate past its training length, each block
    seeing at most the context it saw in training (``task.length - block_size``)."""

    def __init__(self, layers: int, block_size: int, capacity: int, window: int | None = None):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.block_size, self.window, self.length, self.size = block_size, window, 0, 0
        self.capacity = capacity if window is None else window + 2 * block_size  # + a block committed with the next

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """The keys and values that tokens with ``k`` and ``v`` (batch, heads, n, head_dim) attend to:
        the cached ones, then their own (written after them; kept only once ``advance`` is called)."""
        if self.keys[layer] is None:
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.keys[layer], self.values[layer] = k.new_empty(shape), v.new_empty(shape)
        end = self.size + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"{end} tokens in a cache of {self.capacity}")
        self.keys[layer][:, :, self.size: end] = k
        self.values[layer][:, :, self.size: end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Keep the first ``n`` tokens of those last written (committed), sliding the window past the
        oldest ones."""
        self.length += n
        self.size += n
        if self.window is not None and self.size > self.window:
            drop = self.size - self.window
            for buf in self.keys + self.values:
                buf[:, :, :self.window] = buf[:, :, drop: self.size].clone()
            self.size = self.window
