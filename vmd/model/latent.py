"""The latent z of VMD: the encoder q(z | x0, xt) and the priors p(z) / p(z | xt) (method.md §2, §5).

Each prior, given the current sequence, returns a distribution object with ``sample``
and ``kl(mu, logvar)``: the KL of the encoder's diagonal Gaussian against it, per
latent dimension where it has a closed form (then free bits act per dimension), or per
group of dimensions as a deterministic upper bound for a mixture (so the NELBO stays a
bound).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vmd.model.transformer import Trunk

LOGVAR_MIN, LOGVAR_MAX = -12.0, 4.0
_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z, mu, logvar):
    """Per-dimension log N(z; mu, exp(logvar))."""
    return -0.5 * (_LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    """Per-dimension KL(N(mu_q, var_q) || N(mu_p, var_p))."""
    return 0.5 * (logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p) - 1.0)


def reparameterize(mu, logvar, generator=None):
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


class StandardNormal:
    """N(0, I), the paper's prior: blind to the sequence it is drawn for."""

    def __init__(self, batch: int, dim: int, device):
        self.batch, self.dim, self.device = batch, dim, device

    def sample(self, generator=None):
        return torch.randn(self.batch, self.dim, generator=generator, device=self.device)

    def kl(self, mu, logvar):
        zero = torch.zeros_like(mu)
        return gaussian_kl(mu, logvar, zero, zero)


class Mixture:
    """Per sequence, a product over G groups of latent dimensions, each a K-part diagonal-Gaussian
    mixture: weights (B, G, K), means and log-variances (B, G, K, d/G). G groups of K parts give
    K^G joint modes for G*K parameters' worth of parts (e.g. one group per independent factor)."""

    def __init__(self, logits, means, logvars):
        self.logits, self.means, self.logvars = logits, means, logvars

    def sample(self, generator=None):
        b, g, k = self.logits.shape
        probs = torch.softmax(self.logits.float(), dim=-1).reshape(b * g, k)
        pick = torch.multinomial(probs, 1, generator=generator).view(b, g, 1, 1).expand(-1, -1, 1, self.means.shape[-1])
        mu = self.means.gather(2, pick).squeeze(2).reshape(b, -1)
        logvar = self.logvars.gather(2, pick).squeeze(2).reshape(b, -1)
        return reparameterize(mu, logvar, generator)

    def log_prob(self, z):
        b, g, k, dg = self.means.shape
        per = gaussian_log_prob(z.view(-1, g, 1, dg), self.means, self.logvars).sum(-1)
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + per, dim=-1).sum(-1)

    def kl(self, mu, logvar):
        """Per group, the upper bound -log sum_k pi_k exp(-KL(q || p_k)) on KL(q || mixture)
        (Jensen with the best variational weights; exact when the parts are far apart). It has
        no sampling noise, unlike log q(z) - log p(z). One part per group: exact per dimension."""
        b, g, k, dg = self.means.shape
        if k == 1:
            return gaussian_kl(mu, logvar, self.means.reshape(b, -1), self.logvars.reshape(b, -1))
        per_part = gaussian_kl(mu.view(b, g, 1, dg), logvar.view(b, g, 1, dg), self.means, self.logvars).sum(-1)
        return -torch.logsumexp(torch.log_softmax(self.logits, -1) - per_part, dim=-1)


class Pool(nn.Module):
    """Mean over positions, then a small MLP; with zero transformer layers below it, this alone
    reads the (position-aware) token embeddings: a cheap encoder or prior."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU())

    def forward(self, h):
        return self.mlp(h.mean(dim=1))


class Encoder(nn.Module):
    """q(z | x0, xt): a small transformer over the clean tokens and the mask indicator."""

    def __init__(self, vocab: int, length: int, latent_dim: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.trunk = Trunk(vocab, length, dim, layers, heads, flags=2)
        self.pool = Pool(dim)
        self.out = nn.Linear(dim, 2 * latent_dim)
        nn.init.zeros_(self.out.bias)
        self.out.weight.data.mul_(0.1)

    def forward(self, x0, masked):
        h = self.pool(self.trunk(x0, flags=masked))
        mu, logvar = self.out(h).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class ConditionalPrior(nn.Module):
    """p(z | xt): per group of latent dimensions a mixture of ``components`` diagonal Gaussians,
    whose parameters a small transformer reads off the partly masked sequence (method.md §5;
    one group of one component is a conditional Gaussian)."""

    def __init__(self, tokens: int, length: int, latent_dim: int, components: int, groups: int,
                 dim: int, layers: int, heads: int):
        super().__init__()
        self.g, self.k, self.dg = groups, components, latent_dim // groups
        self.trunk = Trunk(tokens, length, dim, layers, heads)
        self.pool = Pool(dim)
        self.out = nn.Linear(dim, groups * components * (1 + 2 * self.dg))
        self.out.weight.data.mul_(0.01)
        nn.init.zeros_(self.out.bias)
        if components > 1:  # spread the parts apart so that they can specialise
            n = groups * components
            self.out.bias.data[n: n * (1 + self.dg)].copy_(torch.randn(n * self.dg))

    def forward(self, xt) -> Mixture:
        h = self.out(self.pool(self.trunk(xt)))
        b, g, k, dg = h.shape[0], self.g, self.k, self.dg
        logits = h[:, : g * k].view(b, g, k)
        means = h[:, g * k: g * k * (1 + dg)].view(b, g, k, dg)
        logvars = h[:, g * k * (1 + dg):].view(b, g, k, dg).clamp(LOGVAR_MIN, LOGVAR_MAX)
        return Mixture(logits, means, logvars)
