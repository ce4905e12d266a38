"""Noise schedules alpha_t (probability a token is still clean at time t), the loss weight
w(t) = -alpha'_t / (1 - alpha_t), and antithetic sampling of t (method.md §1)."""

from __future__ import annotations

import math

import torch


class Schedule:
    """alpha_t falls from 1 at t=0 to 0 at t=1."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) = -alpha'_t / (1 - alpha_t), the NELBO weight of each masked token's loss."""
        return -self.dalpha(t) / (1.0 - self.alpha(t))

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.alpha(t)


class LinearSchedule(Schedule):
    def alpha(self, t):
        return 1.0 - t

    def dalpha(self, t):
        return -torch.ones_like(t)


class CosineSchedule(Schedule):
    """alpha_t = cos(pi t / 2): masks slowly at first, fast near t=1."""

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def dalpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


def make_schedule(name: str) -> Schedule:
    return {"linear": LinearSchedule, "cosine": CosineSchedule}[name]()


def sample_t(n: int, *, antithetic: bool, t_min: float = 1e-3, generator=None, device=None,
             t_max: float = 1.0) -> torch.Tensor:
    """Times in [t_min, t_max). Antithetic: one uniform offset, then n evenly spaced strata."""
    if antithetic:
        u = torch.rand(1, generator=generator, device=device)
        t = (u + torch.arange(n, device=device) / n) % 1.0
    else:
        t = torch.rand(n, generator=generator, device=device)
    return t_min + (t_max - t_min) * t
