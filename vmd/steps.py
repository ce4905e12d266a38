"""The bound of a k-step sampler (``diffusion.steps: k``), as a training objective and a score.

A sampler that fills each block (a one-block model: the whole sequence) in k steps, revealing a
uniformly random set of the still-masked positions at each step (``vmd sample``'s ``random``
strategy), assigns x0 the probability

    p(x0) = E_order prod_j p(x0^{S_j} | x_j)         S_j: the positions revealed at step j
                                                     x_j: the state before it (S_0..S_{j-1} shown)

and so, by Jensen over the order, -log p(x0) <= E_order sum_j -log p(x0^{S_j} | x_j): the bound
trained and scored here. Step j reveals n_j = M_j - M_{j+1} positions, where M_j is what is still
masked before it, exactly as ``vmd.sampling.unmask_counts`` counts (M_0 = the free positions,
round(M_0 * (1 - alpha)) after each step; B / k a step with blocks of B and the linear schedule).

One forward pass scores one state per block: each block draws its step j (stratified over the
batch x blocks), and the sum over the k steps is k times that step's term, unbiased.

- A product model (no z: BD3, MDM) draws the n_j tokens independently, so the term is the sum of
  their cross-entropies; as S_j is a uniformly random n_j of the M_j masked positions, its
  expectation is n_j / M_j times the sum over all of them (scored so: the same bound, less noise).
  With k = 1 it is the sum of the marginals' cross-entropies given the prefix; with one token a
  step it is the any-order autoregressive NLL, the continuous NELBO's value in expectation.
- A Gaussian VMD scores the revealed set jointly through z, q(z | x0, ...) giving the usual
  bound: E_q[sum of the set's cross-entropies given z] + KL, the KL charged once per block when
  z is drawn once per block (``kl_once``), else once per step (k times, for a step's own z).
- A mixture (``latent.kind: mixture``) has no KL: the set's joint probability is the exact sum
  over the classes, sum_c pi_c prod_{i in S_j} p_c(x0^i); the set itself is scored, not averaged.
"""

from __future__ import annotations

import torch

from vmd.runtime.errors import ConfigError
from vmd.schedule import Schedule, sample_t


def remaining(free: torch.Tensor, k: int, schedule: Schedule) -> torch.Tensor:
    """(rows, k + 1) M_j: the positions still masked before step j = 0..k of a row with ``free``
    (rows,) positions to fill, as the sampler counts them (M_k = 0)."""
    probs = [float(schedule.mask_prob(torch.tensor(1.0 - j / k))) for j in range(k + 1)]
    m = torch.round(free.double()[:, None] * torch.tensor(probs, dtype=torch.float64, device=free.device)).long()
    m[:, 0], m[:, k] = free, 0  # (the sampler starts from every free position and ends with none)
    return m


def step_states(x0: torch.Tensor, k: int, schedule: Schedule, mask_id: int, rows: int, given=None, generator=None,
                antithetic: bool = True):
    """A state of the k-step sampler for each of ``rows`` groups of consecutive positions per sequence
    (blocks): each group's step j (stratified over batch x groups), a uniformly random order of its
    free positions (``antithetic``: the steps stratified, else independent), and then (xt, masked, revealed, scale), each (B, L) but ``scale`` (B, rows):
    ``xt`` the state before step j, ``revealed`` the n_j positions step j fills, and ``scale`` =
    k * n_j / M_j, what turns the sum of a product model's cross-entropies over ``masked`` into an
    unbiased estimate of the sum over the k steps (0 where nothing is masked)."""
    b, n = x0.shape
    size = n // rows
    free = torch.ones_like(x0, dtype=torch.bool) if given is None else ~given
    free = free.view(b * rows, size)
    u = sample_t(b * rows, antithetic=antithetic, t_min=0.0, generator=generator, device=x0.device)
    j = (u * k).long().clamp(max=k - 1)
    m = remaining(free.sum(1), k, schedule)
    before, after = m.gather(1, j[:, None]), m.gather(1, j[:, None] + 1)  # (b * rows, 1)
    # a random order of the free positions: rank r < M_j is still masked, M_{j+1} <= r < M_j revealed now
    noise = torch.rand(free.shape, generator=generator, device=x0.device).masked_fill(~free, 2.0)
    rank = noise.argsort(1).argsort(1)
    masked = rank < before
    revealed = masked & (rank >= after)
    scale = (k * (before - after) / before.clamp(min=1)).view(b, rows).float()
    xt = torch.where(masked.view(b, n), torch.full_like(x0, mask_id), x0)
    return xt, masked.view(b, n), revealed.view(b, n), scale


def check_steps(model, k: int, what: str = "--bound-steps") -> None:
    """Refuse (ConfigError, one line) a step count the model's sampler cannot run: 1 to the block size
    (a one-block model: its length), and with blocks a divisor of the block size."""
    bs = model.block_size
    if not 1 <= k <= bs:
        raise ConfigError(f"{what} must be between 1 and the {'block size' if model.blocks > 1 else 'length'} "
                          f"({bs}), got {k}")
    if model.blocks > 1 and bs % k:
        raise ConfigError(f"{what} ({k}) must divide the block size ({bs}): each step reveals an equal share of a block")
