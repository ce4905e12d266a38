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

``diffusion.weighting: flat`` trains with w(t) = 1 in L instead (every masked token counts
the same, whatever t); ``nelbo`` still reports the bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vmd.config import DiffusionConfig, LatentConfig
from vmd.schedule import Schedule, sample_t


def mask_tokens(x0, t, schedule: Schedule, mask_id: int, given=None, generator=None):
    """Mask each position independently with probability 1 - alpha_t; given positions never."""
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    masked = u < schedule.mask_prob(t)[:, None]
    if given is not None:
        masked &= ~given
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


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

    def stacked(self) -> torch.Tensor:
        """The ``METRICS`` as one detached tensor on the loss's device (no wait for the device)."""
        return torch.stack([getattr(self, k).detach().float() for k in METRICS])


def latent_terms(model, x0, xt, masked, generator=None):
    """z ~ q(z | x0, xt) (differentiably), the posterior's mean, and KL(q || prior) per dimension
    or group; zero for rows with nothing masked."""
    q = model.encode(x0, masked)
    return q.rsample(generator), q.mean, model.prior(xt).kl(q).float() * masked.any(1, keepdim=True)


def diffusion_loss(model, x0, schedule: Schedule, diff: DiffusionConfig, latent: LatentConfig,
                   step: int = 0, given=None, generator=None) -> Loss:
    b, n = x0.shape
    t = sample_t(b, antithetic=diff.antithetic, t_min=diff.t_min, generator=generator, device=x0.device)
    xt, masked = mask_tokens(x0, t, schedule, model.mask_id, given, generator)
    w = schedule.weight(t)
    w_train = w if diff.weighting == "elbo" else torch.ones_like(w)

    z, kl, kl_used = None, x0.new_zeros(b, dtype=torch.float32), x0.new_zeros(b, dtype=torch.float32)
    if model.has_latent:
        z, _, per = latent_terms(model, x0, xt, masked, generator)
        kl = per.sum(1)
        if latent.free_bits > 0:  # per dimension, or per group of dimensions for a mixture prior
            floor = latent.free_bits * model.latent_dim / per.shape[1]
            per = per.clamp(min=floor) * masked.any(1, keepdim=True)
        kl_used = per.sum(1)

    logits = model(xt, z).float()
    nll = (F.cross_entropy(logits.transpose(1, 2), x0, reduction="none") * masked).sum(1)  # per sequence
    recon = w * nll
    beta = kl_weight(latent, step)
    nelbo = recon + w * masked.sum(1) * kl  # a valid bound charges the KL once per revealed token
    tokens = n if given is None else (~given).sum(1).clamp(min=1)
    return Loss(
        loss=(w_train * (nll + beta * kl_used)).mean(),
        recon=recon.mean().detach(),
        latent_kl=kl.mean().detach(),
        nelbo=nelbo.mean().detach(),
        bits_per_token=(nelbo / (tokens * math.log(2))).mean().detach(),
    )
