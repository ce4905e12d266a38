"""Metrics of a trained model: the task's sample metrics, and for a VMD the state of its latent."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from vmd.config import Config, SampleConfig
from vmd.diffusion import latent_terms, mask_tokens
from vmd.sampling import generate
from vmd.schedule import make_schedule, sample_t

ACTIVE_THRESHOLD = 0.01  # a latent dimension is active if Var_x[E_q(z_d | x)] exceeds this (Burda et al.)


@torch.no_grad()
def draw_samples(model, task, sc: SampleConfig, schedule_name: str = "linear", device="cpu",
                 on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """``sc.num_samples`` sequences in batches of ``sc.batch_size``, seeded by ``sc.seed``."""
    gen = torch.Generator(device=device).manual_seed(sc.seed)
    schedule = make_schedule(schedule_name)
    out, left = [], sc.num_samples
    while left > 0:
        n = min(sc.batch_size, left)
        x, _ = task.start(n)
        x = generate(model, x.to(device), nfe=sc.nfe, strategy=sc.strategy, temperature=sc.temperature,
                     z_policy=sc.z_policy, schedule=schedule, generator=gen)
        out.append(x.cpu())
        left -= n
        if on_batch:
            on_batch(n)
    return torch.cat(out)


@torch.no_grad()
def latent_stats(model, x0: torch.Tensor, given: torch.Tensor | None, cfg: Config, seed: int = 0,
                 device="cpu") -> dict[str, float]:
    """Over sequences ``x0`` (``given`` positions never masked) under random masks: the mean
    KL(q(z | x0, xt) || prior), the count of active dimensions, and ``z_gain``: how much better
    the denoiser predicts the masked tokens from a z drawn from the posterior than from one
    drawn from the prior, in nats per masked token. A KL held up by free bits can sit above
    zero while the denoiser ignores z; then the gain is ~0."""
    n = x0.shape[0]
    x0 = x0.to(device)
    given = given.to(device) if given is not None else None
    dgen = torch.Generator(device=device).manual_seed(seed)
    schedule = make_schedule(cfg.diffusion.schedule)
    t = sample_t(n, antithetic=True, t_min=cfg.diffusion.t_min, generator=dgen, device=device)
    xt, masked = mask_tokens(x0, t, schedule, model.mask_id, given, dgen)
    z_post, mean, per = latent_terms(model, x0, xt, masked, dgen)
    kl = per.sum(1)
    active = int((mean[masked.any(1)].var(0) > ACTIVE_THRESHOLD).sum())

    def nll(z):
        return F.cross_entropy(model(xt, z).float().transpose(1, 2), x0, reduction="none")[masked]

    gain = (nll(model.sample_z(xt, dgen)) - nll(z_post)).mean()
    return {"latent_kl": float(kl.mean()), "active_dims": active, "latent_dim": model.latent_dim,
            "z_gain": float(gain)}


def evaluate(model, task, cfg: Config, sc: SampleConfig, device="cpu", on_batch=None) -> dict[str, float]:
    samples = draw_samples(model, task, sc, cfg.diffusion.schedule, device, on_batch)
    metrics = dict(task.metrics(samples))
    if model.has_latent:
        x0, given = task.train_batch(4096, torch.Generator().manual_seed(0))  # training-like sequences
        metrics.update(latent_stats(model, x0, given, cfg, device=device))
    return metrics
