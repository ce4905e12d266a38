"""A latent marginalised exactly: a mixture of K product distributions per block (``latent.kind:
mixture``, method.md §5b; Di4C, arXiv 2410.08709, shows such mixtures universal for few-step decoding).

Given the denoiser's state h of a block (a one-block model: the whole sequence),

    p(x^S | x_t) = sum_c pi_c(h) prod_{i in S} p_c(x^i | h_i)

for the positions S revealed together. The K classes are K output heads over one trunk pass, and
their weights pi come from the block's mean state in the same pass, so the class reads the clean
prefix and whatever of the block is already revealed: there is no encoder and no KL, and nothing
can collapse: a class the data does not need just gets no weight. A sampler draws one class per
block at each step, then every revealed token from that class's head.
"""

from __future__ import annotations

import torch
from torch import nn

from vmd.rng import gumbel_noise


class MixtureLogits:
    """The output of a mixture model on (B, L) positions in ``groups`` blocks of L / groups:
    ``log_pi`` (B, groups, K) and, computed on first use, ``log_p`` (B, L, K, V), both normalised.
    A sampler's ``draw`` computes only the drawn class's head, not all K."""

    def __init__(self, log_pi: torch.Tensor, h: torch.Tensor, heads: "MixtureHeads"):
        self.log_pi, self._h, self._heads = log_pi, h, heads
        self._log_p = None

    @property
    def log_p(self) -> torch.Tensor:
        if self._log_p is None:
            b, n, _ = self._h.shape
            k, v = self._heads.classes, self._heads.vocab
            self._log_p = torch.log_softmax(self._heads.heads(self._h).float().view(b, n, k, v), dim=-1)
        return self._log_p

    def _per_position(self) -> torch.Tensor:
        """(B, L, K) log pi of each position's block."""
        n = self._h.shape[1]
        return self.log_pi.repeat_interleave(n // self.log_pi.shape[1], dim=1)

    def marginal(self) -> torch.Tensor:
        """(B, L, V) log p(x^i | x_t) of each position alone, the class summed out: what a
        product sampler, or the continuous-time bound (one token a step), sees."""
        return torch.logsumexp(self._per_position()[..., None] + self.log_p, dim=2)

    def set_nll(self, x0: torch.Tensor, revealed: torch.Tensor) -> torch.Tensor:
        """(B, groups) -log p(x0^S | x_t) of each block's set S (``revealed``, (B, L) bool), exact."""
        log_p = self.log_p
        b, n, k, _ = log_p.shape
        g = self.log_pi.shape[1]
        picked = log_p.gather(3, x0[:, :, None, None].expand(b, n, k, 1)).squeeze(3)  # (B, L, K)
        per_class = (picked * revealed[..., None]).view(b, g, n // g, k).sum(2)
        return -torch.logsumexp(self.log_pi + per_class, dim=-1)

    def draw(self, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One class per block (Gumbel-max in float64, from ``generator``'s rows where it has them):
        ((B, L, V) the logits of each position under its block's class, (B, groups) the classes)."""
        noise = gumbel_noise(self.log_pi.double(), generator)
        c = (self.log_pi.double() + noise).argmax(-1)  # (B, groups)
        b, n, d = self._h.shape
        g, v = c.shape[1], self._heads.vocab
        weight = self._heads.heads.weight.view(-1, v, d)[c]  # (B, groups, V, d): each block's class's head only
        bias = self._heads.heads.bias.view(-1, v)[c]  # (B, groups, V)
        h = self._h.view(b, g, n // g, d)
        return (torch.einsum("bgvd,bgsd->bgsv", weight, h) + bias[:, :, None]).reshape(b, n, v), c


def marginal_logits(out) -> torch.Tensor:
    """A model's output as per-position logits: a mixture's class summed out, a tensor as it is."""
    return out.marginal() if isinstance(out, MixtureLogits) else out


class MixtureHeads(nn.Module):
    """K output heads over the trunk's states, and the class weights of each block from its mean state."""

    def __init__(self, dim: int, vocab: int, classes: int):
        super().__init__()
        self.classes, self.vocab = classes, vocab
        self.heads = nn.Linear(dim, classes * vocab)
        self.weights = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, classes))
        nn.init.zeros_(self.weights[2].weight)  # uniform class weights at first
        nn.init.zeros_(self.weights[2].bias)

    def forward(self, h: torch.Tensor, groups: int) -> MixtureLogits:
        """``h`` (B, L, dim), the states of ``groups`` blocks of consecutive positions."""
        b, n, d = h.shape
        log_pi = torch.log_softmax(self.weights(h.view(b, groups, n // groups, d).mean(2)).float(), dim=-1)
        return MixtureLogits(log_pi, h, self)
