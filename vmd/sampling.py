"""The reverse process (method.md §4): ``nfe`` steps from t=1 to t=0.

Each step decides how many masked positions to reveal (so many that the expected share
still masked follows 1 - alpha_t, all of them after the last step), asks the denoiser for
logits, picks which (``random``, ``top-prob`` or ``top-margin``) and what value (argmax, or
a float64 Gumbel-max draw at a temperature). Given positions never change. A step that
reveals nothing in any row costs nothing: no denoiser call, no draws (so an NFE above the
number of masked positions adds no calls). ``order_noise`` perturbs which positions go first
(Gumbel noise on the log-scores), so that a retry of a failed solve takes a different path
even where the values stay argmax. Where the latent comes from is one small pluggable policy.

Random draws come from a ``torch.Generator`` (one stream for the batch), or from
``RowGenerators`` (one stream per row): then a row draws only at its own steps, from its own
stream, and its result does not depend on which rows share its batch.

A mixture model (``latent.kind: mixture``) gives each row's step one class, drawn from the class
weights it reads off the current state, and that class's logits serve the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vmd.rng import RowGenerators, gumbel_noise, multinomial, rand, randn, sample_generators  # noqa: F401 (users import them from here)
from vmd.schedule import LinearSchedule, Schedule

STRATEGIES = ("random", "top-prob", "top-margin")
# How far a computed mask probability may stray from a falling schedule (float32 ulps are ~6e-8)
# when searching for the next step that may reveal something; a wider margin only costs a check.
_PROB_SLACK = 1e-6


def _rows_only(generator, rows: torch.Tensor):
    return generator.only(rows) if isinstance(generator, RowGenerators) else generator


class DrawOnce:
    """z drawn once from the prior given the starting sequence (the VMD paper)."""

    def start(self, model, x, generator):
        return model.sample_z(x, generator)

    def step(self, model, x, z, logits, generator):
        """Called before each of a row's steps after its first (``generate`` keeps z of the other
        rows). ``logits``: the denoiser's output at the row's previous step (on the sequence before it)."""
        return z


class DrawEveryStep(DrawOnce):
    """z redrawn before every step, from the prior given the current sequence (VADD)."""

    def step(self, model, x, z, logits, generator):
        return model.sample_z(x, generator)


class DrawFromPosterior(DrawOnce):
    """Posterior-guided (method.md §5): the first z from the prior, then each next one drawn
    from the encoder q(z | x0_hat, xt), with x0_hat the current sequence completed by the
    argmax predictions of the row's previous step."""

    def step(self, model, x, z, logits, generator):
        if not model.has_latent:  # no encoder to ask (BD3, a mixture): nothing to draw
            return z
        masked = x == model.mask_id
        x0_hat = torch.where(masked, logits.argmax(-1), x)
        return model.encode(x0_hat, masked).rsample(generator)


Z_POLICIES = {"once": DrawOnce, "step": DrawEveryStep, "posterior": DrawFromPosterior}


@dataclass
class Step:
    """What a step callback sees: after step ``index`` of ``nfe``. Only steps that reveal something
    are seen (the steps between revealed nothing and left ``x`` as it was)."""

    index: int
    nfe: int
    x: torch.Tensor  # (B, L) current sequence, mask id where still masked
    revealed: torch.Tensor  # (B, L) bool: positions filled in this step
    z: torch.Tensor | None


def unmask_counts(masked_now, masked_at_start, s: float, schedule: Schedule):
    """How many to reveal now so that round(M0 * (1 - alpha_s)) stay masked after this step."""
    keep = torch.round(masked_at_start.double() * float(schedule.mask_prob(torch.tensor(s))))
    return (masked_now - keep.long()).clamp(min=0)


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
        return rand(logits.shape[:2], generator, device=logits.device, dtype=torch.float64)
    probs = torch.softmax(logits.double(), -1)
    if strategy == "top-prob":
        return probs.max(-1).values
    if strategy == "top-margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    raise ValueError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")


def _mask_prob(schedule: Schedule, k: int, nfe: int) -> float:
    """The share of the starting masks to keep masked after step ``k`` (0-based) of ``nfe``."""
    return float(schedule.mask_prob(torch.tensor(1.0 - (k + 1) / nfe)))


def next_reveal(k: int, nfe: int, schedule: Schedule, masked_now, masked_at_start) -> int:
    """The first step from ``k`` on that may reveal a position in some row; ``nfe`` if none will.

    A row with m of its M0 positions masked reveals once round(M0 * p) < m, that is p <= (m - 0.5) / M0,
    for p the mask probability after the step; p falls step by step, so a bisection over the steps
    finds the first that may (``_PROB_SLACK`` covers float wobble in p). Steps before it reveal nothing.
    """
    live = masked_now > 0
    if not bool(live.any()):
        return nfe
    bound = float(((masked_now[live].double() - 0.5) / masked_at_start[live].double()).max()) + _PROB_SLACK
    if _mask_prob(schedule, k, nfe) <= bound:
        return k
    lo, hi = k, nfe - 1
    if _mask_prob(schedule, hi, nfe) > bound:
        return nfe
    while hi - lo > 1:  # the step lo may not reveal, the step hi may
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _mask_prob(schedule, mid, nfe) <= bound else (mid, hi)
    return hi


@torch.no_grad()
def generate(model, x: torch.Tensor, *, nfe: int, strategy: str = "random", temperature: float = 1.0,
             z_policy: "str | DrawOnce" = "once", schedule: Schedule | None = None, generator=None,
             z: torch.Tensor | None = None, order_noise: float = 0.0,
             callback: Callable[[Step], None] | None = None) -> torch.Tensor:
    """Fill every position of ``x`` that holds the mask id; return the completed sequences.

    ``z`` fixes the starting latent (for a VMD); otherwise the policy draws it. ``z_policy``: a
    name from ``Z_POLICIES`` or a policy object (``start`` and ``step`` as ``DrawOnce`` has).
    ``generator``: a ``torch.Generator`` or ``RowGenerators``.

    Only steps that reveal a position in some row call the denoiser (on the whole batch). A row's
    first such step uses the starting z; the policy redraws z before each of its later ones, from
    the logits of its previous one. Rows with nothing to reveal in a step keep their z and their
    last logits, and draw nothing from ``RowGenerators``, so a row's path depends on it alone.
    While every row reveals something at every step (with the linear schedule: ``nfe`` at most
    the fewest masked positions of a row), this is exactly the plain loop over the ``nfe`` steps.
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
    seen = torch.zeros_like(start, dtype=torch.bool)  # rows that have been through a step
    last = None  # each row's logits at its last step
    k = 0
    while True:
        masked = x == model.mask_id
        k = next_reveal(k, nfe, schedule, masked.sum(1), start)
        if k >= nfe:
            break
        n = unmask_counts(masked.sum(1), start, 1.0 - (k + 1) / nfe, schedule)
        active = n > 0
        k += 1
        if not bool(active.any()):
            continue
        redraw = active & seen
        if bool(redraw.any()):
            drawn = policy.step(model, x, z, last, _rows_only(generator, redraw))
            z = drawn if z is None or drawn is None or bool(redraw.all()) else torch.where(redraw[:, None], drawn, z)
        logits = model(x, z)
        rows_gen = _rows_only(generator, active)
        if not isinstance(logits, torch.Tensor):  # a mixture (vmd/model/mixture.py): a class per row, then its head
            logits, _ = logits.draw(rows_gen)
        values = choose_values(logits, temperature, rows_gen)
        score = scores(logits, strategy, rows_gen, order_noise).masked_fill(~masked, float("-inf"))
        rank = torch.empty_like(x)
        order = score.argsort(dim=1, descending=True)
        rank.scatter_(1, order, torch.arange(x.shape[1], device=x.device).expand_as(x))
        revealed = masked & (rank < n[:, None])
        x = torch.where(revealed, values, x)
        last = logits if last is None or bool(active.all()) else torch.where(active[:, None, None], logits, last)
        seen |= active
        if callback is not None:
            callback(Step(k, nfe, x, revealed, z))
    return x
