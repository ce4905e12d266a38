"""Metrics of a trained model: the task's sample metrics, and for a VMD the state of its latent."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn.functional as F

from vmd.config import Config, SampleConfig
from vmd.diffusion import diffusion_loss, latent_terms, mask_tokens
from vmd.blockwise import generate_blocks
from vmd.rng import sample_generators
from vmd.runtime.errors import ConfigError
from vmd.model.mixture import marginal_logits
from vmd.sampling import generate
from vmd.schedule import make_schedule, sample_t

ACTIVE_THRESHOLD = 0.01  # a latent dimension is active if Var_x[E_q(z_d | x)] exceeds this (Burda et al.)


@torch.no_grad()
def draw_samples(model, task, sc: SampleConfig, schedule_name: str = "linear", device="cpu",
                 on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """``sc.num_samples`` sequences in batches of ``sc.batch_size``, seeded by ``sc.seed``. A block
    diffusion model is sampled block by block with ``sc.nfe`` steps per block (at most its block
    size), one random stream per sample (vmd/blockwise.py)."""
    schedule = make_schedule(schedule_name)
    if model.blocks > 1:
        streams = sample_generators(sc.seed, sc.num_samples)
        out = []
        for lo in range(0, sc.num_samples, sc.batch_size):
            n = min(sc.batch_size, sc.num_samples - lo)
            out.append(generate_blocks(model, n, model.length, steps_per_block=min(sc.nfe, model.block_size),
                                       strategy=sc.strategy, temperature=sc.temperature, z_policy=sc.z_policy,
                                       schedule=schedule, device=device,
                                       generator=streams.subset(torch.arange(lo, lo + n))).cpu())
            if on_batch:
                on_batch(n)
        return torch.cat(out)
    gen = torch.Generator(device=device).manual_seed(sc.seed)
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
    z_post, mean, per = latent_terms(model, x0, xt, masked, dgen)  # a block VMD: per block
    kl = per.sum(-1).sum(1)  # per sequence (a block VMD's blocks summed), as training logs it
    active = int((mean[masked.view(n * model.blocks, -1).any(1)].var(0) > ACTIVE_THRESHOLD).sum())

    def nll(z):
        return F.cross_entropy(model(xt, z, x0).float().transpose(1, 2), x0, reduction="none")[masked]

    gain = (nll(model.sample_z(xt, dgen, x0)) - nll(z_post)).mean()
    return {"latent_kl": float(kl.mean()), "active_dims": active, "latent_dim": model.latent_dim,
            "z_gain": float(gain)}


@torch.no_grad()
def mixture_stats(model, x0: torch.Tensor, device="cpu") -> dict[str, float]:
    """What a mixture's classes buy where all of a block is revealed at once (one step per block):
    ``class_gain_bits``, bits per token of the product of the marginals' one-step bound above the
    mixture's (both exact, with the clean prefix of every block); ``classes_used``, the perplexity
    of the classes' mean weight (how many the data spreads over); ``class_entropy_bits``, the mean
    entropy of one block's weights (low: each prefix picks its class)."""
    x0 = x0.to(device)
    out = model(torch.full_like(x0, model.mask_id), None, x0)
    mixed = out.set_nll(x0, torch.ones_like(x0, dtype=torch.bool)).sum(1)
    product = F.cross_entropy(out.marginal().transpose(1, 2), x0, reduction="none").sum(1)
    pi = out.log_pi.exp()
    mean = pi.mean((0, 1))
    per_block = -(pi * out.log_pi).sum(-1).mean()
    return {"class_gain_bits": float((product - mixed).mean() / (x0.shape[1] * math.log(2))),
            "classes_used": float(torch.exp(-(mean * mean.clamp_min(1e-12).log()).sum())),
            "class_entropy_bits": float(per_block / math.log(2)), "classes": model.mixture}


@torch.no_grad()
def likelihood(model, sequences: torch.Tensor, cfg: Config, *, draws: int = 4, seed: int = 0, batch_size: int = 64,
               device="cpu", on_batch: Callable[[int], None] | None = None, shard: tuple[int, int] = (0, 1),
               steps: int = 0) -> dict:
    """The NELBO of ``sequences`` (N, L) in bits per token: an upper bound on -log2 p(x) / L; with
    ``steps`` = k, the bound of the sampler that fills each block in k steps (vmd/steps.py), for a
    model trained either way. The KL is charged with weight 1 (``vmd/diffusion.py``), times come from
    the full range [t_min, 1) (never the training clip), ``draws`` independent draws of the times
    (steps) and masks per sequence (stratified over each batch's sequences x blocks), batch i's from
    a generator seeded by ``seed`` and i. The standard error is over sequences, of their mean over
    draws. An autoregressive model (one token per block) has no times to draw: its exact NLL is
    computed once. ``shard`` (rank, ranks): score only the batches i with i % ranks == rank (the
    scores of the shards add up to the whole's: each batch is seeded by itself)."""
    draws = 1 if model.block_size == 1 else draws
    gen = torch.Generator(device=device)
    schedule = make_schedule(cfg.diffusion.schedule)
    diffusion = dataclasses.replace(cfg.diffusion, steps=steps)
    rank, ranks = shard
    per_sequence = []
    for i, lo in enumerate(range(0, sequences.shape[0], batch_size)):
        if i % ranks != rank:
            continue
        gen.manual_seed(seed * 1_000_003 + i)
        x0 = sequences[lo: lo + batch_size].to(device)
        runs = [diffusion_loss(model, x0, schedule, diffusion, cfg.latent, generator=gen, full_range=True)
                .per_sequence for _ in range(draws)]
        per_sequence.append(torch.stack(runs).double().mean(0).cpu())
        if on_batch:
            on_batch(x0.shape[0])
    length = sequences.shape[1]
    bits = torch.cat(per_sequence) / (length * math.log(2)) if per_sequence else torch.zeros(0, dtype=torch.float64)
    n = bits.numel()
    stderr = float(bits.std() / math.sqrt(n)) if n > 1 else float("nan")
    return {"bits": float(bits.mean()) if n else 0.0, "stderr": stderr, "tokens": n * length, "sequences": n,
            "draws": draws, "steps": steps}


@torch.no_grad()
def judge_nll(judge, samples: torch.Tensor, batch_size: int = 64, device="cpu") -> float:
    """The mean negative log-likelihood in nats per token of ``samples`` (N, L) under an
    autoregressive ``judge`` (a model with one token per block, whose loss is the exact NLL);
    exp of it is the samples' generative perplexity."""
    if judge.block_size != 1:
        raise ConfigError(f"a judge must be autoregressive (model.block_size 1); this one has blocks of {judge.block_size}")
    if samples.shape[1] != judge.length:
        raise ConfigError(f"the judge reads sequences of {judge.length} tokens, the samples have {samples.shape[1]}")
    total = 0.0
    for lo in range(0, samples.shape[0], batch_size):
        x0 = samples[lo: lo + batch_size].to(device)
        logits = marginal_logits(judge(torch.full_like(x0, judge.mask_id), None, x0)).float()
        total += float(F.cross_entropy(logits.transpose(1, 2), x0, reduction="sum"))
    return total / samples.numel()


def sample_quality(samples: torch.Tensor, task, judge, batch_size: int = 64, device="cpu",
                   words: bool = True) -> dict[str, float]:
    """What text samples are worth, cheaply: their perplexity under an autoregressive ``judge``
    (``gen_ppl``; left out with no judge), the share of their words found in the training split (``word_validity``, the
    task's; it reads the corpus, left out with ``words=False``), and the entropy of their token
    frequencies (``unigram_entropy_bits``), which a sampler that repeats a few safe words cannot
    keep up while it games the other two."""
    out = {} if judge is None else {"gen_ppl": math.exp(judge_nll(judge, samples, batch_size, device))}
    if words:
        out.update(task.word_validity(samples))
    out["unigram_entropy_bits"] = task.metrics(samples)["unigram_entropy_bits"]
    return out


def evaluate(model, task, cfg: Config, sc: SampleConfig, device="cpu", on_batch=None) -> dict[str, float]:
    samples = draw_samples(model, task, sc, cfg.diffusion.schedule, device, on_batch)
    metrics = dict(task.metrics(samples))
    if model.has_latent:
        x0, given = task.train_batch(4096, torch.Generator().manual_seed(0))  # training-like sequences
        metrics.update(latent_stats(model, x0, given, cfg, device=device))
    if model.mixture:
        x0, _ = task.train_batch(4096, torch.Generator().manual_seed(0))
        metrics.update(mixture_stats(model, x0, device=device))
    return metrics
