"""Random draws for the network and the samplers alike: from one ``torch.Generator`` for a batch,
or from ``RowGenerators``, one stream per row, so that what a row draws does not depend on the rows
that share its batch. Below both the model (its latent draws z) and the sampler."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


class RowGenerators:
    """One CPU ``torch.Generator`` per row of a batch: row i's draws come from ``generators[i]``
    alone, so what a row draws does not depend on the other rows. ``rows`` (bool, one per row):
    only those rows draw; the others get zeros and their streams do not move. The draws are made
    on the CPU and moved to the batch's device in one copy: one small op per row there would cost
    a kernel launch each on a GPU; and a row draws the same on any device."""

    def __init__(self, generators, rows: torch.Tensor | None = None):
        self.generators = list(generators)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, index: torch.Tensor) -> "RowGenerators":
        """The streams of rows ``index`` (the same generators: drawing from one advances the other)."""
        return RowGenerators([self.generators[i] for i in index.tolist()])

    def only(self, rows: torch.Tensor) -> "RowGenerators":
        return RowGenerators(self.generators, rows.cpu())

    def each(self, shape, draw: Callable[[int, torch.Generator], torch.Tensor], device=None, dtype=None):
        """``draw(i, generators[i])``, a CPU tensor of shape ``shape[1:]``, for each drawing row i,
        zeros for the others, stacked and moved to ``device``."""
        shape = tuple(shape)
        if shape[0] != len(self):
            raise ValueError(f"a draw for {shape[0]} rows from {len(self)} row generators")
        drawing = [True] * len(self) if self.rows is None else self.rows.tolist()
        if not any(drawing):
            return torch.zeros(shape, device=device, dtype=dtype)
        zero = torch.zeros(shape[1:], dtype=dtype) if not all(drawing) else None
        parts = [draw(i, g) if on else zero for i, (g, on) in enumerate(zip(self.generators, drawing))]
        return torch.stack(parts).to(device)


def sample_generators(seed: int, n: int) -> RowGenerators:
    """One random stream per sample, fixed by ``seed`` and the sample's index: sample i draws the
    same whatever the batch size."""
    return RowGenerators(torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
                         for i in range(n))


def rand(shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    """``torch.rand``, or one row at a time from ``RowGenerators``."""
    if isinstance(generator, RowGenerators):
        return generator.each(shape, lambda i, g: torch.rand(shape[1:], generator=g, dtype=dtype), device, dtype)
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def randn(shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    """``torch.randn``, or one row at a time from ``RowGenerators``."""
    if isinstance(generator, RowGenerators):
        return generator.each(shape, lambda i, g: torch.randn(shape[1:], generator=g, dtype=dtype), device, dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def multinomial(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One category index drawn from each vector of ``probs`` (B, ..., K): (B, ...)."""
    k = probs.shape[-1]
    if isinstance(generator, RowGenerators):
        cpu = probs.cpu()
        return generator.each(probs.shape[:-1], lambda i, g: torch.multinomial(cpu[i].reshape(-1, k), 1, generator=g)
                              .view(probs.shape[1:-1]), probs.device, torch.long)
    return torch.multinomial(probs.reshape(-1, k), 1, generator=generator).view(probs.shape[:-1])


def gumbel_noise(like: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard Gumbel noise of ``like``'s shape, dtype and device (Gumbel-max sampling)."""
    u = rand(like.shape, generator, device=like.device, dtype=like.dtype)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(like.dtype).tiny)))
