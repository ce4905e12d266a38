"""The training losses of MDM and VMD as named terms (method.md §1-2).

    L = E_t E_xt [ w(t) * ( recon + beta * latent_kl ) ]
    recon     = sum over masked positions of -log p(x0^i | xt[, z]),  z ~ q(z | x0, xt)
    latent_kl = KL(q(z | x0, xt) || p(z[ | xt]))                       (VMD only)

That is the objective the VMD paper trains (method.md §2), but it is not an upper bound
on -log p(x0) in continuous time: on the two-token task it falls to about half the data
entropy. In the continuous-time limit each reverse step reveals one token and draws its
own z, so a valid bound pays the KL once per revealed token:

    NELBO = E_t E_xt [ w(t) * ( recon + |masked| * latent_kl ) ]

which is what ``nelbo`` and bits per token report (for an MDM both coincide). A row with
nothing masked contributes no KL: the denoiser copies every token, so z is unused.

Unless z is drawn once for the whole reverse process. Where neither the encoder nor the prior
reads xt (``latent.encoder_sees_mask: false`` and the N(0, I) or uniform prior), q(z | x0) and
p(z) do not depend on the step, so the model can be read as: draw z once, then run the whole
reverse process given z (the sampler's ``z_policy: once``). Its bound charges the KL once:

    NELBO = KL(q(z | x0) || p(z)) + E_t E_xt [ w(t) * recon ]

and training minimises that bound (at beta = 1): the KL is not weighted by w(t) (``kl_once``).

``diffusion.weighting: flat`` trains with w(t) = 1 in L instead (every masked token counts
the same, whatever t); ``nelbo`` still reports the bound.

Block diffusion (BD3-LM, method.md §3; ``model.block_size``) sums the same terms over blocks:
each block b has its own time t_b (stratified over batch x blocks), its masked tokens are
predicted from xt^b and the clean prefix x0^{<b} (one pass over xt ⊕ x0, vmd/model/blocks.py),
and a block VMD has one latent z_b per block, its KL charged to that block:

    NELBO = E [ sum_b w(t_b) * ( recon_b + |masked_b| * KL_b ) ]

or, with z_b drawn once per block as above, ``sum_b ( KL_b + E[ w(t_b) * recon_b ] )``.

Training may draw t_b from the clipped range ``diffusion.clip`` (BD3-LM's variance reduction);
``full_range=True`` (evaluation) always uses [t_min, 1), the bound. With one token per block
(B = 1) every token is masked with weight 1: the loss is then an autoregressive model's exact
negative log-likelihood.

With ``diffusion.steps`` = k the same terms are those of the k-step sampler's own bound instead
(vmd/steps.py): each block's state is that before one of its k steps, w the weight that makes one
step an unbiased estimate of all k, and a KL drawn per step charged once per step (k a block).
A mixture (``latent.kind: mixture``) scores the tokens a step reveals jointly, its classes summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vmd.config import DiffusionConfig, LatentConfig
from vmd.model.mixture import MixtureLogits, marginal_logits
from vmd.schedule import Schedule, sample_t
from vmd.steps import step_states


def mask_tokens(x0, t, schedule: Schedule, mask_id: int, given=None, generator=None):
    """Mask each position independently with probability 1 - alpha_t; given positions never. ``t``:
    (B,) one time per sequence, or (B, blocks) one per block of consecutive positions."""
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    p = schedule.mask_prob(t)
    p = p[:, None] if p.dim() == 1 else p.repeat_interleave(x0.shape[1] // p.shape[1], dim=1)
    masked = u < p
    if given is not None:
        masked &= ~given
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def kl_once(model) -> bool:
    """Whether z is drawn once per sequence (per block) in the model's bound: neither its encoder
    nor its prior reads xt, so q(z | x0) and p(z) are the same at every step."""
    return model.has_latent and not model.encoder_sees_mask and not getattr(model.prior_net, "reads_xt", False)


def kl_weight(latent: LatentConfig, step: int) -> float:
    """beta, warmed up linearly from 0 over ``kl_warmup_steps``."""
    if latent.kl_warmup_steps <= 0:
        return latent.beta
    return latent.beta * min(1.0, step / latent.kl_warmup_steps)


METRICS = ("loss", "recon", "latent_kl", "nelbo", "bits_per_token")


@dataclass
class Loss:
    loss: torch.Tensor  # what is minimised (beta may be warming up, free bits may apply)
    recon: torch.Tensor  # E[w(t) * sum_masked -log p], per sequence
    latent_kl: torch.Tensor  # E[KL(q || p)], unweighted, per sequence
    nelbo: torch.Tensor  # E[w(t) * (recon + |masked| * KL)], per sequence: a valid upper bound on -log p(x0)
    bits_per_token: torch.Tensor
    per_sequence: torch.Tensor | None = None  # the NELBO of each sequence (nats), for evaluation

    def stacked(self) -> torch.Tensor:
        """The ``METRICS`` as one detached tensor on the loss's device (no wait for the device)."""
        return torch.stack([getattr(self, k).detach().float() for k in METRICS])


def latent_terms(model, x0, xt, masked, generator=None):
    """z ~ q(z | x0, xt) (differentiably; batch x blocks rows for a block VMD), the posterior's
    mean, and KL(q || prior) per block and dimension or group, (B, blocks, k); zero for blocks
    with nothing masked, unless z is drawn once (``kl_once``: then it is drawn whatever the step)."""
    b = x0.shape[0]
    q = model.encode(x0, masked)
    per = model.prior(xt, x0).kl(q).float().view(b, model.blocks, -1)
    if not kl_once(model):
        per = per * masked.view(b, model.blocks, -1).any(-1, keepdim=True)
    return q.rsample(generator), q.mean, per


def block_times(b: int, model, diff: DiffusionConfig, generator=None, device=None, full_range: bool = False):
    """(B, blocks) a time per block: stratified over batch x blocks, from ``diff.clip`` in training
    or the full [t_min, 1) with ``full_range``; all 1 with one token per block (exact AR NLL)."""
    if model.block_size == 1:
        return torch.ones(b, model.blocks, device=device)
    lo, hi = (diff.t_min, 1.0) if full_range else (max(diff.clip[0], diff.t_min), diff.clip[1])
    t = sample_t(b * model.blocks, antithetic=diff.antithetic, t_min=lo, t_max=hi, generator=generator, device=device)
    return t.view(b, model.blocks)


def diffusion_loss(model, x0, schedule: Schedule, diff: DiffusionConfig, latent: LatentConfig,
                   step: int = 0, given=None, generator=None, full_range: bool = False) -> Loss:
    """The loss and the bound it estimates, in continuous time or (``diff.steps`` = k) the exact
    bound of the k-step sampler (vmd/steps.py), on one draw of times (steps) and masks per block."""
    b, n = x0.shape
    nb, k = model.blocks, diff.steps
    if k:
        xt, masked, revealed, w = step_states(x0, k, schedule, model.mask_id, nb, given, generator, diff.antithetic)
        # a step's own z (the encoder or prior reads the state) pays its KL once per step: k times a block
        charge = k * revealed.view(b, nb, -1).any(-1).float()
        w_train = w
    else:
        t = block_times(b, model, diff, generator, x0.device, full_range)  # (B, blocks)
        xt, masked = mask_tokens(x0, t, schedule, model.mask_id, given, generator)
        w = schedule.weight(t) if model.block_size > 1 else torch.ones_like(t)
        charge = w * masked.view(b, nb, -1).sum(-1)  # z drawn at each step, one token a step: a KL per token
        w_train = w if diff.weighting == "elbo" else torch.ones_like(w)

    z, kl, kl_used = None, w.new_zeros(b, nb), w.new_zeros(b, nb)
    once = kl_once(model)
    if model.has_latent:
        z, _, per = latent_terms(model, x0, xt, masked, generator)
        kl = per.sum(-1)
        if latent.free_bits > 0:  # per dimension, or per group of dimensions for a mixture prior
            floor = latent.free_bits * model.latent_dim / per.shape[-1]
            per = per.clamp(min=floor) * (1.0 if once else masked.view(b, nb, -1).any(-1, keepdim=True))
        kl_used = per.sum(-1)

    out = model(xt, z, x0)
    if isinstance(out, MixtureLogits) and k:  # the revealed set scored jointly, the classes summed exactly
        nll = out.set_nll(x0, revealed)
        w = w_train = float(k) * torch.ones_like(w)
    else:
        logits = marginal_logits(out).float()
        nll = (F.cross_entropy(logits.transpose(1, 2), x0, reduction="none") * masked).view(b, nb, -1).sum(-1)
    recon = (w * nll).sum(1)
    beta = kl_weight(latent, step)
    charge = torch.ones_like(charge) if once else charge  # a z drawn once per block pays its KL once
    nelbo = recon + (charge * kl).sum(1)
    if once or k:  # the bound itself (at beta = 1)
        loss = (w_train * nll).sum(1) + beta * (charge * kl_used).sum(1)
    else:  # the VMD paper's objective: w(t) * (recon + beta * KL)
        loss = (w_train * (nll + beta * kl_used)).sum(1)
    tokens = n if given is None else (~given).sum(1).clamp(min=1)
    return Loss(
        loss=loss.mean(),
        recon=recon.mean().detach(),
        latent_kl=kl.sum(1).mean().detach(),
        nelbo=nelbo.mean().detach(),
        bits_per_token=(nelbo / (tokens * math.log(2))).mean().detach(),
        per_sequence=nelbo.detach(),
    )
