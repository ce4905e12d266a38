"""The checks of a config beyond its types: each key's range, and the settings that involve more
than one key (``vmd.config.from_dict`` runs both before any work starts, naming the keys). The
functions take a ``vmd.config.Config``; this module imports nothing of it, so the two form no circle."""

from __future__ import annotations

from typing import Any

from vmd.runtime.errors import ConfigError

# Range checks beyond the types: key path -> (test, what a valid value is).
_POSITIVE = (lambda v: v > 0, "a number > 0")
_NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
RANGES: dict[str, tuple[Any, str]] = {
    "task.p": (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    "task.vocab": (lambda v: v >= 2, "an integer >= 2"),
    "task.grids": _POSITIVE, "task.min_givens": (lambda v: 17 <= v <= 80, "17 to 80 givens"),
    "task.max_givens": (lambda v: 17 <= v <= 80, "17 to 80 givens"),
    "task.length": (lambda v: v >= 1, "an integer >= 1 (tokens per sequence)"),
    "task.vocab_size": (lambda v: v >= 0, "an integer >= 0 (0 unless task.tokenizer is sentencepiece)"),
    "model.dim": _POSITIVE, "model.layers": _POSITIVE, "model.heads": _POSITIVE,
    "model.mlp_ratio": _POSITIVE, "model.dropout": (lambda v: 0.0 <= v < 1.0, "a rate in [0, 1)"),
    "latent.dim": _POSITIVE, "latent.encoder_dim": _POSITIVE, "latent.encoder_layers": _NON_NEGATIVE,
    "latent.components": _POSITIVE, "latent.groups": _POSITIVE, "latent.prior_dim": _POSITIVE, "latent.prior_layers": _NON_NEGATIVE,
    "latent.beta": _NON_NEGATIVE, "latent.kl_warmup_steps": _NON_NEGATIVE, "latent.free_bits": _NON_NEGATIVE,
    "diffusion.t_min": (lambda v: 0.0 <= v < 1.0, "a time in [0, 1)"),
    "diffusion.clip": (lambda v: len(v) == 2 and 0.0 <= v[0] < v[1] <= 1.0, "two rates [lo, hi] with 0 <= lo < hi <= 1"),
    "model.block_size": _NON_NEGATIVE, "diffusion.steps": _NON_NEGATIVE,
    "train.steps": _POSITIVE, "train.batch_size": _POSITIVE, "train.accumulate": _POSITIVE,
    "device.timeout": _POSITIVE, "train.lr": _POSITIVE,
    "train.weight_decay": _NON_NEGATIVE, "train.warmup_steps": _NON_NEGATIVE,
    "train.min_lr_ratio": (lambda v: 0.0 <= v <= 1.0, "a ratio in [0, 1]"),
    "train.grad_clip": _NON_NEGATIVE, "train.ema": (lambda v: 0.0 <= v < 1.0, "a decay in [0, 1) (0 turns EMA off)"),
    "train.log_every": _POSITIVE, "train.checkpoint_every": _POSITIVE, "train.eval_every": _NON_NEGATIVE,
    "train.eval_sequences": _POSITIVE,
    "sample.nfe": (lambda v: v >= 1, "an integer >= 1"), "sample.temperature": _NON_NEGATIVE,
    "sample.num_samples": _POSITIVE, "sample.batch_size": _POSITIVE,
    "sample.seed": (lambda v: v >= 0, "an integer >= 0"), "train.seed": (lambda v: v >= 0, "an integer >= 0"),
}


def validate(cfg) -> None:
    """Checks that involve more than one key."""
    if cfg.task.min_givens > cfg.task.max_givens:
        raise ConfigError(f"task.min_givens ({cfg.task.min_givens}) is above task.max_givens ({cfg.task.max_givens})")
    if cfg.task.name == "sudoku" and cfg.task.source == "file" and not cfg.task.file:
        raise ConfigError("task.source is 'file' but task.file is empty; give the puzzle file with --set task.file=PATH")
    if cfg.task.name == "text" and cfg.task.tokenizer == "sentencepiece":
        if not cfg.task.file:
            raise ConfigError("task.tokenizer sentencepiece needs task.file (your own text); text8 is character-level")
        if cfg.task.vocab_size <= 0:
            raise ConfigError("task.tokenizer is sentencepiece but task.vocab_size is 0; give the number of pieces, "
                              "e.g. --set task.vocab_size=2000")
    elif cfg.task.vocab_size:
        raise ConfigError(f"task.vocab_size ({cfg.task.vocab_size}) applies to task.tokenizer sentencepiece of "
                          "task.name text only; leave it 0")
    if cfg.model.relation_bias and cfg.task.name != "sudoku":
        raise ConfigError(f"model.relation_bias needs a task with structured positions (sudoku), not {cfg.task.name!r}")
    if cfg.model.block_size and cfg.task.name == "sudoku":
        raise ConfigError("model.block_size needs a task without givens or a cell layout (text, synthetic), not sudoku")
    if cfg.model.positions == "rotary" and cfg.task.name == "sudoku":
        raise ConfigError("model.positions rotary would drop Sudoku's row, column and box embeddings; keep learned")
    if cfg.task.name == "text" and cfg.model.block_size and cfg.task.length % cfg.model.block_size:
        raise ConfigError(f"model.block_size ({cfg.model.block_size}) must divide task.length ({cfg.task.length})")
    if cfg.train.eval_every % cfg.train.log_every:
        raise ConfigError(f"train.eval_every ({cfg.train.eval_every}) must be a multiple of train.log_every "
                          f"({cfg.train.log_every}): validation is reported with a log line")
    if cfg.train.batch_size % cfg.train.accumulate:
        raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of train.accumulate "
                          f"({cfg.train.accumulate}): each pass takes an equal share")
    check_steps(cfg)
    if cfg.model.dim % cfg.model.heads:
        raise ConfigError(f"model.dim ({cfg.model.dim}) must be a multiple of model.heads ({cfg.model.heads})")
    if cfg.latent.kind == "gaussian" and cfg.latent.dim % cfg.latent.groups:
        raise ConfigError(f"latent.dim ({cfg.latent.dim}) must be a multiple of latent.groups ({cfg.latent.groups})")
    if cfg.train.freeze_denoiser and not (cfg.method == "vmd" and cfg.train.init_from):
        raise ConfigError("train.freeze_denoiser keeps a trained denoiser fixed: it needs method vmd and train.init_from")
    parts = ("encoder_dim", "prior_dim") if cfg.latent.prior == "conditional" else ("encoder_dim",)
    for part in parts if cfg.method == "vmd" and cfg.latent.kind != "mixture" else ():  # networks only a VMD has
        if getattr(cfg.latent, part) % cfg.model.heads:
            raise ConfigError(f"latent.{part} must be a multiple of model.heads ({cfg.model.heads})")


def check_steps(cfg) -> None:
    """The k-step bound and the latents that only make sense with (or without) it, as one line each."""
    k, diff, lat = cfg.diffusion.steps, cfg.diffusion, cfg.latent
    if k:
        if diff.clip != [0.0, 1.0]:
            raise ConfigError(f"diffusion.clip {diff.clip} draws continuous times; diffusion.steps {k} trains the "
                              "k-step bound, which has none: leave diffusion.clip [0, 1]")
        if diff.weighting != "elbo":
            raise ConfigError(f"diffusion.weighting {diff.weighting} reweights the continuous-time loss; "
                              f"diffusion.steps {k} trains the k-step bound itself: leave diffusion.weighting elbo")
        bs, length = cfg.model.block_size, cfg.task.length
        if cfg.task.name == "text" and bs and bs < length and (bs % k or k > bs):
            raise ConfigError(f"diffusion.steps ({k}) must divide model.block_size ({bs}): each step reveals "
                              "an equal share of a block")
        if cfg.task.name == "text" and not 0 < bs < length and k > length:
            raise ConfigError(f"diffusion.steps ({k}) is more steps than task.length ({length}) has tokens")
    if cfg.method != "vmd":
        named = [text for text, on in (("latent.kind mixture", lat.kind == "mixture"),
                                       ("latent.prior prefix", lat.prior == "prefix"),
                                       ("latent.constant true", lat.constant)) if on]
        if named:
            raise ConfigError(f"{', '.join(named)} shape a latent, which method {cfg.method} has none of: "
                              "set method vmd")
        return
    bs, length = cfg.model.block_size, cfg.task.length
    if lat.prior == "prefix" and not (bs and cfg.task.name != "sudoku" and (cfg.task.name != "text" or bs < length)):
        raise ConfigError("latent.prior prefix reads the clean blocks before each block: it needs block diffusion "
                          "(model.block_size)")
    if lat.prior == "prefix" and lat.encoder_sees_mask:
        raise ConfigError("latent.prior prefix keeps z_b one draw per block; an encoder that sees the mask makes it "
                          "a draw per step: set latent.encoder_sees_mask false")
    if lat.kind == "mixture" and (lat.prior != "normal" or lat.constant or lat.free_bits):
        raise ConfigError("latent.kind mixture has no encoder, prior network or KL: leave latent.prior normal, "
                          "latent.constant false and latent.free_bits 0")
    if lat.kind == "mixture" and lat.components < 2:
        raise ConfigError("latent.kind mixture needs latent.components >= 2 (the classes of z)")
    if lat.kind == "mixture" and cfg.train.freeze_denoiser:
        raise ConfigError("latent.kind mixture has no z path apart from its heads: train.freeze_denoiser would "
                          "train nothing")
