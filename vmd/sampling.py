"""The reverse process (method.md §4): ``nfe`` denoiser calls from t=1 to t=0.

Each step asks the denoiser for logits, decides how many masked positions to reveal
(so many that the expected share still masked follows 1 - alpha_t, all of them after
the last step), picks which (``random``, ``top-prob`` or ``top-margin``) and what value
(argmax, or a float64 Gumbel-max draw at a temperature). Given positions never change.
``order_noise`` perturbs which positions go first (Gumbel noise on the log-scores), so that
a retry of a failed solve takes a different path even where the values stay argmax.
Where the latent comes from is one small pluggable policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vmd.schedule import LinearSchedule, Schedule

STRATEGIES = ("random", "top-prob", "top-margin")


class DrawOnce:
    """z drawn once from the prior given the starting sequence (the VMD paper)."""

    def start(self, model, x, generator):
        return model.sample_z(x, generator)

    def step(self, model, x, z, logits, generator):
        """``logits``: the denoiser's output at the previous step (on the sequence before it)."""
        return z


class DrawEveryStep(DrawOnce):
    """z redrawn before every step, from the prior given the current sequence (VADD)."""

    def step(self, model, x, z, logits, generator):
        return model.sample_z(x, generator)


class DrawFromPosterior(DrawOnce):
    """Posterior-guided (method.md §5): the first z from the prior, then each next one drawn
    from the encoder q(z | x0_hat, xt), with x0_hat the current sequence completed by the
    previous step's argmax predictions."""

    def step(self, model, x, z, logits, generator):
        masked = x == model.mask_id
        x0_hat = torch.where(masked, logits.argmax(-1), x)
        return model.encode(x0_hat, masked).rsample(generator)


Z_POLICIES = {"once": DrawOnce, "step": DrawEveryStep, "posterior": DrawFromPosterior}


@dataclass
class Step:
    """What a step callback sees: after step ``index`` of ``nfe``."""

    index: int
    nfe: int
    x: torch.Tensor  # (B, L) current sequence, mask id where still masked
    revealed: torch.Tensor  # (B, L) bool: positions filled in this step
    z: torch.Tensor | None


def unmask_counts(masked_now, masked_at_start, s: float, schedule: Schedule):
    """How many to reveal now so that round(M0 * (1 - alpha_s)) stay masked after this step."""
    keep = torch.round(masked_at_start.double() * float(schedule.mask_prob(torch.tensor(s))))
    return (masked_now - keep.long()).clamp(min=0)


def gumbel_noise(like: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard Gumbel noise of ``like``'s shape, dtype and device (Gumbel-max sampling)."""
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(like.dtype).tiny)))


def choose_values(logits, temperature: float, generator=None):
    """argmax at temperature 0; otherwise a categorical draw by Gumbel-max in float64."""
    logits = logits.double()
    if temperature == 0:
        return logits.argmax(-1)
    return (logits / temperature + gumbel_noise(logits, generator)).argmax(-1)


def scores(logits, strategy: str, generator=None, noise: float = 0.0):
    """How much each position wants to be revealed now (higher first). ``noise`` > 0 ranks by
    log(score) + noise * Gumbel instead: a Plackett-Luce draw of the order at temperature
    ``noise``, which keeps the most confident positions likely first (``random`` ignores it: its
    order is drawn afresh anyway)."""
    if noise and strategy != "random":
        s = scores(logits, strategy, generator)
        return s.clamp_min(torch.finfo(s.dtype).tiny).log() + noise * gumbel_noise(s, generator)
    if strategy == "random":
        return torch.rand(logits.shape[:2], generator=generator, device=logits.device, dtype=torch.float64)
    probs = torch.softmax(logits.double(), -1)
    if strategy == "top-prob":
        return probs.max(-1).values
    if strategy == "top-margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    raise ValueError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")


@torch.no_grad()
def generate(model, x: torch.Tensor, *, nfe: int, strategy: str = "random", temperature: float = 1.0,
             z_policy: "str | DrawOnce" = "once", schedule: Schedule | None = None, generator=None,
             z: torch.Tensor | None = None, order_noise: float = 0.0,
             callback: Callable[[Step], None] | None = None) -> torch.Tensor:
    """Fill every position of ``x`` that holds the mask id; return the completed sequences.

    ``z`` fixes the starting latent (for a VMD); otherwise the policy draws it. ``z_policy``: a
    name from ``Z_POLICIES`` or a policy object (``start`` and ``step`` as ``DrawOnce`` has).
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    if isinstance(z_policy, str) and z_policy not in Z_POLICIES:
        raise ValueError(f"unknown z policy '{z_policy}'; choose one of {', '.join(Z_POLICIES)}")
    schedule = schedule or LinearSchedule()
    policy = Z_POLICIES[z_policy]() if isinstance(z_policy, str) else z_policy
    x = x.clone()
    start = (x == model.mask_id).sum(1)
    if z is None:
        z = policy.start(model, x, generator)
    for k in range(nfe):
        if k:
            z = policy.step(model, x, z, logits, generator)
        masked = x == model.mask_id
        n = unmask_counts(masked.sum(1), start, 1.0 - (k + 1) / nfe, schedule)
        logits = model(x, z)
        values = choose_values(logits, temperature, generator)
        score = scores(logits, strategy, generator, order_noise).masked_fill(~masked, float("-inf"))
        rank = torch.empty_like(x)
        order = score.argsort(dim=1, descending=True)
        rank.scatter_(1, order, torch.arange(x.shape[1], device=x.device).expand_as(x))
        revealed = masked & (rank < n[:, None])
        x = torch.where(revealed, values, x)
        if callback is not None:
            callback(Step(k + 1, nfe, x, revealed, z))
    return x
