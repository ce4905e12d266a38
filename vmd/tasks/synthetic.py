"""Synthetic distributions with exact joints (method.md §6): where one-step MDM fails.

- ``2tok``: (k, k+1 mod V), k uniform; ``2tok-nonuniform``: P(k) = (k+1) / sum.
- ``d1``: (k, k+1, k+2, k+3) mod V; ``d2``: (k, k+1, l, l+1) mod V, k and l independent.
- ``corr``: x1 uniform; with probability p, x2 = x1 + 1, otherwise x2 uniform.

Metrics compare samples with the exact joint: accuracy is the share of samples in the
support; ``kl`` is KL(p_data || p_model) with p_model the samples' empirical frequencies,
smoothed by a pseudo-count of one sample spread over all V^L sequences (so a sequence the
model never produced costs a finite, large amount).
"""

from __future__ import annotations

import itertools

import torch

from vmd.config import TaskConfig


def joint(kind: str, vocab: int, p: float = 1.0) -> torch.Tensor:
    """The exact data distribution as a dense tensor of shape (V,) * length."""
    v = vocab
    if kind in ("2tok", "2tok-nonuniform", "corr"):
        out = torch.zeros(v, v, dtype=torch.float64)
        weights = torch.arange(1, v + 1, dtype=torch.float64) if kind == "2tok-nonuniform" else torch.ones(v, dtype=torch.float64)
        weights = weights / weights.sum()
        for k in range(v):
            out[k, (k + 1) % v] += weights[k] * (p if kind == "corr" else 1.0)
            if kind == "corr":
                out[k] += weights[k] * (1.0 - p) / v
        return out
    if kind == "d1":
        out = torch.zeros(v, v, v, v, dtype=torch.float64)
        for k in range(v):
            out[k, (k + 1) % v, (k + 2) % v, (k + 3) % v] = 1.0 / v
        return out
    if kind == "d2":
        out = torch.zeros(v, v, v, v, dtype=torch.float64)
        for k, l in itertools.product(range(v), range(v)):
            out[k, (k + 1) % v, l, (l + 1) % v] = 1.0 / v**2
        return out
    raise ValueError(f"unknown synthetic kind {kind!r}")


class SyntheticTask:
    layout = None  # plain learned positions

    def __init__(self, cfg: TaskConfig):
        self.kind = cfg.kind
        self.vocab = cfg.vocab
        self.p_data = joint(cfg.kind, cfg.vocab, cfg.p)
        self.length = self.p_data.dim()
        self.flat = self.p_data.flatten()
        self.place = cfg.vocab ** torch.arange(self.length - 1, -1, -1)

    def prepare(self, progress=None) -> None:
        """Nothing to make: batches are drawn from the exact joint."""

    def state(self) -> dict[str, str]:
        """Nothing learned from data: the config alone rebuilds the task."""
        return {}

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes[:, None] // self.place) % self.vocab

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.cpu().long() * self.place).sum(1)

    def train_batch(self, n: int, generator=None):
        codes = torch.multinomial(self.flat, n, replacement=True, generator=generator)
        return self.decode(codes), None

    def start(self, n: int):
        return torch.full((n, self.length), self.vocab, dtype=torch.long), None

    def model_distribution(self, samples: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(self.encode(samples), minlength=self.flat.numel()).double()
        alpha = 1.0 / self.flat.numel()
        return (counts + alpha) / (counts.sum() + 1.0)

    def metrics(self, samples: torch.Tensor) -> dict[str, float]:
        q = self.model_distribution(samples)
        support = self.flat > 0
        in_support = support[self.encode(samples)].double().mean()
        p = self.flat[support]
        kl = (p * (p / q[support]).log()).sum()
        return {"accuracy": float(in_support), "kl": float(kl), "samples": int(samples.shape[0])}

    def format(self, x: torch.Tensor) -> list[str]:
        return [" ".join("_" if int(v) == self.vocab else str(int(v)) for v in row) for row in x]
