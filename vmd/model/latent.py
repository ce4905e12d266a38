"""The latent z of VMD: the encoder q(z | x0, xt) and the priors p(z) / p(z | xt) (method.md §2, §5).

Two latent families. ``gaussian``: z in R^d, the encoder a diagonal Gaussian, the prior
N(0, I) or a learned mixture. ``categorical`` (method.md §5, "a discrete latent"): z is
G independent categorical variables of K classes, fed to the decoder as their one-hot
codes; the encoder and the prior give logits, and the KL is exact.

The encoder returns a posterior object with ``rsample`` (differentiable) and ``mean``.
Each prior, given the current sequence, returns an object with ``sample`` and ``kl(q)``:
the KL of the posterior against it, per latent dimension where it has a closed form (then
free bits act per dimension), or per group (mixture: a deterministic upper bound, so the
NELBO stays a bound; categorical: exact).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vmd.model.blocks import causal_mask, training_mask
from vmd.model.blocks import positions as block_positions
from vmd.model.transformer import Trunk
from vmd.rng import gumbel_noise, multinomial, randn

LOGVAR_MIN, LOGVAR_MAX = -12.0, 4.0
_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z, mu, logvar):
    """Per-dimension log N(z; mu, exp(logvar))."""
    return -0.5 * (_LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    """Per-dimension KL(N(mu_q, var_q) || N(mu_p, var_p))."""
    return 0.5 * (logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p) - 1.0)


def reparameterize(mu, logvar, generator=None):
    """``generator``: a torch.Generator or ``vmd.sampling.RowGenerators`` (one stream per row)."""
    eps = randn(mu.shape, generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


class Gaussian:
    """A diagonal Gaussian posterior q(z | x0, xt)."""

    def __init__(self, mu, logvar):
        self.mu, self.logvar = mu.float(), logvar.float()

    @property
    def mean(self):
        return self.mu

    def rsample(self, generator=None):
        return reparameterize(self.mu, self.logvar, generator)


class Categorical:
    """G independent categorical variables of K classes each, logits (B, G, K); z is the
    concatenation of their one-hot codes, shape (B, G * K). As a posterior it is sampled by
    straight-through Gumbel-max (hard one-hot codes forward, softmax gradients back); as a
    prior (uniform, or learned p(z | xt)) it gives the exact KL per variable."""

    def __init__(self, logits):
        self.logits = logits.float()

    @property
    def mean(self):
        return torch.softmax(self.logits, -1).flatten(1)

    def _one_hot(self, scores):
        return F.one_hot(scores.argmax(-1), self.logits.shape[-1]).to(self.logits.dtype)

    def sample(self, generator=None):  # Gumbel-max in float64, like the token draws
        logits = self.logits.double()
        return self._one_hot(logits + gumbel_noise(logits, generator)).flatten(1)

    def rsample(self, generator=None):
        soft = torch.softmax(self.logits + gumbel_noise(self.logits, generator), -1)
        return (self._one_hot(soft) - soft.detach() + soft).flatten(1)

    def kl(self, q: "Categorical"):
        log_q = torch.log_softmax(q.logits, -1)
        return (log_q.exp() * (log_q - torch.log_softmax(self.logits, -1))).sum(-1)


class StandardNormal:
    """N(0, I), the paper's prior: blind to the sequence it is drawn for."""

    def __init__(self, batch: int, dim: int, device):
        self.batch, self.dim, self.device = batch, dim, device

    def sample(self, generator=None):
        return randn((self.batch, self.dim), generator, device=self.device)

    def kl(self, q: Gaussian):
        zero = torch.zeros_like(q.mu)
        return gaussian_kl(q.mu, q.logvar, zero, zero)


class PointMass:
    """z held at 0 (``latent.constant``, a control): as a posterior or a prior, every draw is 0 and
    every KL is 0, so the VMD's networks train with a latent that carries nothing."""

    def __init__(self, rows: int, dim: int, device):
        self.rows, self.dim, self.device = rows, dim, device

    @property
    def mean(self):
        return torch.zeros(self.rows, self.dim, device=self.device)

    def sample(self, generator=None):
        return self.mean

    rsample = sample

    def kl(self, q: "PointMass"):
        return torch.zeros(q.rows, q.dim, device=q.device)


class Mixture:
    """Per sequence, a product over G groups of latent dimensions, each a K-part diagonal-Gaussian
    mixture: weights (B, G, K), means and log-variances (B, G, K, d/G). G groups of K parts give
    K^G joint modes for G*K parameters' worth of parts (e.g. one group per independent factor)."""

    def __init__(self, logits, means, logvars):
        self.logits, self.means, self.logvars = logits, means, logvars

    def sample(self, generator=None):
        b, g = self.logits.shape[:2]
        probs = torch.softmax(self.logits.float(), dim=-1)
        pick = multinomial(probs, generator).view(b, g, 1, 1).expand(-1, -1, 1, self.means.shape[-1])
        mu = self.means.gather(2, pick).squeeze(2).reshape(b, -1)
        logvar = self.logvars.gather(2, pick).squeeze(2).reshape(b, -1)
        return reparameterize(mu, logvar, generator)

    def log_prob(self, z):
        b, g, k, dg = self.means.shape
        per = gaussian_log_prob(z.view(-1, g, 1, dg), self.means, self.logvars).sum(-1)
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + per, dim=-1).sum(-1)

    def kl(self, q: Gaussian):
        """Per group, the upper bound -log sum_k pi_k exp(-KL(q || p_k)) on KL(q || mixture)
        (Jensen with the best variational weights; exact when the parts are far apart). It has
        no sampling noise, unlike log q(z) - log p(z). One part per group: exact per dimension."""
        b, g, k, dg = self.means.shape
        mu, logvar = q.mu, q.logvar
        if k == 1:
            return gaussian_kl(mu, logvar, self.means.reshape(b, -1), self.logvars.reshape(b, -1))
        per_part = gaussian_kl(mu.view(b, g, 1, dg), logvar.view(b, g, 1, dg), self.means, self.logvars).sum(-1)
        return -torch.logsumexp(torch.log_softmax(self.logits, -1) - per_part, dim=-1)


def select_rows(dist, index: torch.Tensor):
    """``dist`` (a posterior or prior over batch x blocks rows) restricted to rows ``index``: one
    block's latent per sequence, for block-by-block generation."""
    if isinstance(dist, StandardNormal):
        return StandardNormal(len(index), dist.dim, dist.device)
    if isinstance(dist, PointMass):
        return PointMass(len(index), dist.dim, dist.device)
    if isinstance(dist, Categorical):
        return Categorical(dist.logits[index])
    if isinstance(dist, Gaussian):
        return Gaussian(dist.mu[index], dist.logvar[index])
    return Mixture(dist.logits[index], dist.means[index], dist.logvars[index])


class Pool(nn.Module):
    """A small MLP on the trunk's mean over positions (``Trunk.pooled``); with zero transformer
    layers below it, this alone reads the (position-aware) token embeddings: a cheap encoder or prior."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU())

    def forward(self, pooled):
        return self.mlp(pooled)


class Encoder(nn.Module):
    """q(z | x0, xt): a small transformer over the clean tokens and the mask indicator. A
    diagonal Gaussian over ``latent_dim`` dimensions, or with ``classes`` = (G, K) the logits of
    G categorical variables."""

    def __init__(self, vocab: int, length: int, latent_dim: int, dim: int, layers: int, heads: int,
                 classes: tuple[int, int] | None = None, layout=None, relation_bias: bool = False,
                 block_size: int = 0, rotary: bool = False):
        super().__init__()
        self.classes = classes
        self.block_size = block_size if 0 < block_size < length else 0
        if self.block_size:  # q(z_b | x0^b, xt^b, x0^{<b}): the clean sequence read block-causally
            self.register_buffer("mask", causal_mask(length, block_size), persistent=False)
        self.trunk = Trunk(vocab, length, dim, layers, heads, flags=2, layout=layout, relation_bias=relation_bias,
                           rotary=rotary)
        self.pool = Pool(dim)
        self.out = nn.Linear(dim, classes[0] * classes[1] if classes else 2 * latent_dim)
        nn.init.zeros_(self.out.bias)
        self.out.weight.data.mul_(0.1)

    def forward(self, x0, masked):
        """The posterior per sequence, or with blocks per block: batch x blocks rows, in that order."""
        if self.block_size:
            h = self.trunk(x0, flags=masked, mask=self.mask)
            h = self.out(self.pool(h.view(-1, self.block_size, h.shape[-1]).mean(1)))
        else:
            h = self.out(self.pool(self.trunk.pooled(x0, flags=masked)))
        if self.classes:
            return Categorical(h.view(-1, *self.classes))
        mu, logvar = h.chunk(2, dim=-1)
        return Gaussian(mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))


class ConditionalPrior(nn.Module):
    """p(z | xt): per group of latent dimensions a mixture of ``components`` diagonal Gaussians,
    whose parameters a small transformer reads off the partly masked sequence (method.md §5;
    one group of one component is a conditional Gaussian); for a categorical latent, the
    logits of each of its ``groups`` variables over ``components`` classes.

    With ``prefix`` (block diffusion), p(z_b | x0^{<b}) instead: the transformer reads the clean
    sequence block-causally (as the clean half of the denoiser), each block's mean state summarises
    x0^{<=b}, and block b takes block b - 1's (block 0 a learned start). It reads nothing of xt, so
    z_b stays one draw for all of its block's steps and its KL is charged once (``kl_once``)."""

    def __init__(self, tokens: int, length: int, latent_dim: int, components: int, groups: int,
                 dim: int, layers: int, heads: int, categorical: bool = False, layout=None,
                 relation_bias: bool = False, block_size: int = 0, rotary: bool = False, prefix: bool = False):
        super().__init__()
        self.g, self.k = groups, components
        self.dg = 0 if categorical else latent_dim // groups  # categorical: class logits only
        self.length = length
        self.block_size = block_size if 0 < block_size < length else 0
        self.reads_xt = not prefix
        if prefix:  # p(z_b | x0^{<b}): x0 read block-causally, shifted by one block
            self.register_buffer("mask", causal_mask(length, block_size), persistent=False)
            self.start = nn.Parameter(torch.zeros(dim))
        elif self.block_size:  # p(z_b | xt^b, x0^{<b}): the denoiser's view of xt ⊕ x0
            self.register_buffer("mask", training_mask(length, block_size), persistent=False)
            self.register_buffer("pos", block_positions(length), persistent=False)
        self.trunk = Trunk(tokens, length, dim, layers, heads, layout=layout, relation_bias=relation_bias,
                           rotary=rotary)
        self.pool = Pool(dim)
        self.out = nn.Linear(dim, groups * components * (1 + 2 * self.dg))
        self.out.weight.data.mul_(0.01)
        nn.init.zeros_(self.out.bias)
        if components > 1 and self.dg:  # spread the parts apart so that they can specialise
            n = groups * components
            self.out.bias.data[n: n * (1 + self.dg)].copy_(torch.randn(n * self.dg))

    def forward(self, xt, x0=None) -> Mixture | Categorical:
        """Per sequence, or with blocks per block (batch x blocks rows; ``x0``: the clean sequence,
        of which each block sees only the blocks before it)."""
        if not self.reads_xt:
            b, bs = x0.shape[0], self.block_size
            h = self.trunk(x0, mask=self.mask).view(b, -1, bs, self.start.shape[0]).mean(2)  # (B, blocks, dim)
            h = torch.cat([self.start.expand(b, 1, -1), h[:, :-1]], dim=1)
            h = self.out(self.pool(h.reshape(-1, h.shape[-1])))
        elif self.block_size:
            h = self.trunk(torch.cat([xt, x0], dim=1), mask=self.mask, pos=self.pos)[:, :self.length]
            h = self.out(self.pool(h.reshape(-1, self.block_size, h.shape[-1]).mean(1)))
        else:
            h = self.out(self.pool(self.trunk.pooled(xt)))
        b, g, k, dg = h.shape[0], self.g, self.k, self.dg
        if not dg:
            return Categorical(h.view(b, g, k))
        # one split, not three slices: the slices' backward zero-fills a full-size gradient each
        logits, means, logvars = h.split([g * k, g * k * dg, g * k * dg], dim=-1)
        return Mixture(logits.view(b, g, k), means.view(b, g, k, dg),
                       logvars.view(b, g, k, dg).clamp(LOGVAR_MIN, LOGVAR_MAX))
