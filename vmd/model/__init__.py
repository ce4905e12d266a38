"""The denoiser shared by MDM and VMD, with VMD's encoder and prior beside it."""

from __future__ import annotations

import torch
from torch import nn

from vmd.config import Config
from vmd.runtime.errors import ConfigError
from vmd.model.blocks import KVCache, training_mask, window_mask
from vmd.model.blocks import positions as block_positions
from vmd.model.latent import Categorical, ConditionalPrior, Encoder, PointMass, StandardNormal
from vmd.model.mixture import MixtureHeads, MixtureLogits
from vmd.model.transformer import Trunk
from vmd.steps import check_steps


class MaskedDiffusionModel(nn.Module):
    """f(xt[, z]) -> logits over the ``vocab`` clean tokens; id ``vocab`` is [MASK].

    The [MASK] logit is never predicted (SUBS): the head has ``vocab`` outputs only, and
    unmasked positions are copied through by the loss and the sampler. A mixture model
    (``latent.kind: mixture``) returns ``MixtureLogits`` instead: K heads and their weights.
    """

    def __init__(self, cfg: Config, vocab: int, length: int, layout: torch.Tensor | None = None):
        super().__init__()
        m, lat = cfg.model, cfg.latent
        self.vocab, self.length, self.mask_id = vocab, length, vocab
        # the size of z as the decoder sees it: d for a Gaussian, G one-hot codes of K classes for a categorical
        categorical = lat.kind == "categorical"
        vmd = cfg.method == "vmd"
        # a mixture's z is marginalised exactly over K heads: no encoder, no prior, nothing for the trunk to read
        self.mixture = lat.components if vmd and lat.kind == "mixture" else 0
        self.latent_dim = 0 if not vmd or self.mixture else lat.groups * lat.components if categorical else lat.dim
        self.constant_z = vmd and lat.constant  # a control: z held at 0
        self.encoder_sees_mask = lat.encoder_sees_mask
        # block diffusion (vmd/model/blocks.py): ``blocks`` of ``block_size`` tokens; one block is the plain MDM
        block = m.block_size if 0 < m.block_size < length else length
        if length % block:
            raise ConfigError(f"model.block_size ({m.block_size}) must divide the sequence length ({length})")
        self.block_size, self.blocks = block, length // block
        if self.blocks > 1:
            self.register_buffer("block_mask", training_mask(length, block), persistent=False)
            self.register_buffer("block_pos", block_positions(length), persistent=False)
        rotary = m.positions == "rotary"
        self.trunk = Trunk(vocab + 1, length, m.dim, m.layers, m.heads, m.mlp_ratio, m.dropout,
                           cond_dim=self.latent_dim, layout=layout, relation_bias=m.relation_bias,
                           cond_mlp=lat.adaln == "mlp", rotary=rotary)
        self.head = MixtureHeads(m.dim, vocab, self.mixture) if self.mixture else nn.Linear(m.dim, vocab)
        self.encoder = self.prior_net = self.classes = None
        if lat.prior == "prefix" and self.latent_dim and self.blocks == 1:
            raise ConfigError("latent.prior prefix reads the clean blocks before each block: it needs more than one "
                              f"block (model.block_size below the length, {length})")
        if self.latent_dim and not self.constant_z:  # (z held at 0 needs neither encoder nor prior)
            self.classes = (lat.groups, lat.components) if categorical else None
            per_block = self.block_size if self.blocks > 1 else 0
            self.encoder = Encoder(vocab, length, lat.dim, lat.encoder_dim, lat.encoder_layers, m.heads, self.classes, layout,
                                   m.relation_bias, per_block, rotary)
            if lat.prior in ("conditional", "prefix"):
                self.prior_net = ConditionalPrior(vocab + 1, length, lat.dim, lat.components, lat.groups,
                                                  lat.prior_dim, lat.prior_layers, m.heads, categorical, layout,
                                                  m.relation_bias, per_block, rotary, prefix=lat.prior == "prefix")

    @property
    def has_latent(self) -> bool:
        """Whether the denoiser reads a z (a mixture's classes are summed out instead)."""
        return self.latent_dim > 0

    @property
    def random_latent(self) -> bool:
        """Whether a sample draws a latent, of either kind: a new draw gives a new sample."""
        return (self.has_latent and not self.constant_z) or bool(self.mixture)

    def _read(self, h: torch.Tensor, groups: int):
        """The head on the trunk's states: logits (B, N, vocab), or a mixture's ``MixtureLogits``."""
        return self.head(h, groups) if self.mixture else self.head(h)

    def forward(self, xt: torch.Tensor, z: torch.Tensor | None = None, x0: torch.Tensor | None = None):
        """Logits (B, L, vocab) for ``xt``. With blocks, ``x0`` is the clean sequence that each
        block's prefix is read from (the training pass over xt ⊕ x0, vmd/model/blocks.py), and ``z``
        has one latent per block (batch x blocks rows, or (B, blocks, d)), each modulating only its
        block's noisy tokens."""
        if self.blocks == 1:
            return self._read(self.trunk(xt, cond=z), 1)
        if x0 is None:
            raise ConfigError("a block diffusion model reads each block's clean prefix: give x0, or generate "
                              "block by block (vmd.blockwise.generate_blocks)")
        b, n = xt.shape
        cond = None if z is None else z.reshape(b, self.blocks, -1)
        h = self.trunk(torch.cat([xt, x0], dim=1), cond=cond, mask=self.block_mask, pos=self.block_pos,
                       plain_groups=self.blocks if z is not None else 0)
        return self._read(h[:, :n], self.blocks)

    # Block-by-block generation (method.md §3; the sampler is vmd/blockwise.py): the clean prefix
    # lives in a KVCache, and each denoising step runs the model on the current block alone.

    @property
    def cache_window(self) -> int | None:
        """A model with rotary positions keeps a sliding window of ``length - block_size`` tokens (the
        most context a block has in training) and so generates past its length; learned positions: None."""
        return self.length - self.block_size if self.trunk.rotary else None

    def new_cache(self) -> KVCache:
        return KVCache(len(self.trunk.blocks), self.block_size, self.length, self.cache_window)

    def reach(self, end: int) -> None:
        """Refuse to place a token at position ``end - 1`` or later that the positions cannot hold."""
        if end > self.length and not self.trunk.rotary:
            raise ConfigError(f"this model's positions are learned for {self.length} tokens: it cannot generate "
                              f"{end} (a model with model.positions: rotary slides past its length)")

    def commit(self, x: torch.Tensor, cache: KVCache) -> None:
        """Append clean whole blocks ``x`` (B, n) to ``cache``: each attends to itself and the clean
        tokens before it (within the window), as the clean half does in training."""
        bs, n = self.block_size, x.shape[1]
        self.reach(cache.length + n)
        if n > bs and cache.window is not None and cache.size + n > cache.window:
            for lo in range(0, n, bs):  # the window slides inside x: one block at a time
                self.commit(x[:, lo: lo + bs], cache)
            return
        mask = None if n == bs else window_mask(n, bs, cache.window, cache.size, x.device)
        self.trunk(x, mask=mask, cache=cache, keep=n)

    def block_logits(self, xb: torch.Tensor, z: torch.Tensor | None, cache: KVCache,
                     commit: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, n, vocab) of the noisy block ``xb`` (B, n) that follows the cached prefix, ``z``
        its latent (B, d) or None. ``commit``: a clean block to commit first, in the same pass (it
        attends as ``commit`` would make it; the noisy block attends to it as well)."""
        if commit is None:
            self.reach(cache.length + xb.shape[1])
            return self._read(self.trunk(xb, cond=z, cache=cache), 1)
        bs = self.block_size
        self.reach(cache.length + 2 * bs)
        mask = window_mask(2 * bs, bs, cache.window, cache.size, xb.device)
        cond = None if z is None else z.reshape(xb.shape[0], 1, -1)
        h = self.trunk(torch.cat([commit, xb], 1), cond=cond, mask=mask, cache=cache, keep=bs,
                       plain_groups=-1 if z is not None else 0)
        return self._read(h[:, bs:], 1)

    def block_logits_uncached(self, prefix: torch.Tensor, xb: torch.Tensor, z: torch.Tensor | None,
                              window: int | None = None) -> torch.Tensor:
        """``block_logits`` with the clean ``prefix`` (B, s) recomputed in the same pass (the
        reference the cache is tested and timed against); ``window`` as the cache's."""
        bs, s, n = self.block_size, prefix.shape[1], xb.shape[1]
        self.reach(s + n)
        dev = xb.device
        seen = window_mask(n, bs, window, s, dev)  # the noisy block as block s / bs: [prefix | itself]
        mask = torch.cat([torch.cat([seen[:, s:], seen[:, :s]], 1),
                          torch.cat([torch.zeros(s, n, dtype=torch.bool, device=dev), window_mask(s, bs, window, 0, dev)], 1)])
        pos = torch.cat([torch.arange(s, s + n, device=dev), torch.arange(s, device=dev)])
        cond = None if z is None else z.reshape(xb.shape[0], 1, -1)
        h = self.trunk(torch.cat([xb, prefix], 1), cond=cond, mask=mask, pos=pos,
                       plain_groups=s // bs if z is not None else 0)
        return self._read(h[:, :n], 1)

    def encode(self, x0: torch.Tensor, masked: torch.Tensor):
        """The posterior q(z | x0, xt), per sequence or per block (batch x blocks rows); the encoder
        sees x0 and (by default) which positions are masked."""
        if self.constant_z:
            return PointMass(x0.shape[0] * self.blocks, self.latent_dim, x0.device)
        return self.encoder(x0, masked if self.encoder_sees_mask else torch.zeros_like(masked))

    def prior(self, xt: torch.Tensor, x0: torch.Tensor | None = None):
        """p(z), p(z | xt) or per block p(z_b | xt^b, x0^{<b}) or p(z_b | x0^{<b}), as an object with
        ``sample`` and ``kl``."""
        if self.constant_z:
            return PointMass(xt.shape[0] * self.blocks, self.latent_dim, xt.device)
        if self.prior_net is not None:
            return self.prior_net(xt, x0) if self.blocks > 1 else self.prior_net(xt)
        rows = xt.shape[0] * self.blocks
        if self.classes:  # uniform over each variable's classes
            return Categorical(torch.zeros(rows, *self.classes, device=xt.device))
        return StandardNormal(rows, self.latent_dim, xt.device)

    def sample_z(self, xt: torch.Tensor, generator=None, x0: torch.Tensor | None = None) -> torch.Tensor | None:
        """A latent drawn from the prior given the current sequence; None for an MDM."""
        if not self.has_latent:
            return None
        return self.prior(xt, x0).sample(generator)


def build_model(cfg: Config, vocab: int, length: int, layout: torch.Tensor | None = None) -> MaskedDiffusionModel:
    """``layout``: optional (length, F) position structure from the task (see ``Trunk``). A model
    trained for the k-step bound (``diffusion.steps``) must be able to run that sampler."""
    model = MaskedDiffusionModel(cfg, vocab, length, layout)
    if cfg.diffusion.steps:
        check_steps(model, cfg.diffusion.steps, "diffusion.steps")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
