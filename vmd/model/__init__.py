"""The denoiser shared by MDM and VMD, with VMD's encoder and prior beside it."""

from __future__ import annotations

import torch
from torch import nn

from vmd.config import Config
from vmd.errors import ConfigError
from vmd.model.blocks import positions as block_positions
from vmd.model.blocks import training_mask
from vmd.model.latent import Categorical, ConditionalPrior, Encoder, StandardNormal
from vmd.model.transformer import Trunk


class MaskedDiffusionModel(nn.Module):
    """f(xt[, z]) -> logits over the ``vocab`` clean tokens; id ``vocab`` is [MASK].

    The [MASK] logit is never predicted (SUBS): the head has ``vocab`` outputs only, and
    unmasked positions are copied through by the loss and the sampler.
    """

    def __init__(self, cfg: Config, vocab: int, length: int, layout: torch.Tensor | None = None):
        super().__init__()
        m, lat = cfg.model, cfg.latent
        self.vocab, self.length, self.mask_id = vocab, length, vocab
        # the size of z as the decoder sees it: d for a Gaussian, G one-hot codes of K classes for a categorical
        categorical = lat.kind == "categorical"
        self.latent_dim = 0 if cfg.method != "vmd" else lat.groups * lat.components if categorical else lat.dim
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
        self.head = nn.Linear(m.dim, vocab)
        self.encoder = self.prior_net = self.classes = None
        if self.latent_dim:
            self.classes = (lat.groups, lat.components) if categorical else None
            per_block = self.block_size if self.blocks > 1 else 0
            self.encoder = Encoder(vocab, length, lat.dim, lat.encoder_dim, lat.encoder_layers, m.heads, self.classes, layout,
                                   m.relation_bias, per_block, rotary)
            if lat.prior == "conditional":
                self.prior_net = ConditionalPrior(vocab + 1, length, lat.dim, lat.components, lat.groups,
                                                  lat.prior_dim, lat.prior_layers, m.heads, categorical, layout,
                                                  m.relation_bias, per_block, rotary)

    @property
    def has_latent(self) -> bool:
        return self.latent_dim > 0

    def forward(self, xt: torch.Tensor, z: torch.Tensor | None = None, x0: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, vocab) for ``xt``. With blocks, ``x0`` is the clean sequence that each
        block's prefix is read from (the training pass over xt ⊕ x0, vmd/model/blocks.py), and ``z``
        has one latent per block (batch x blocks rows, or (B, blocks, d)), each modulating only its
        block's noisy tokens."""
        if self.blocks == 1:
            return self.head(self.trunk(xt, cond=z))
        if x0 is None:
            raise ConfigError("a block diffusion model reads each block's clean prefix: give x0 (block-by-block "
                              "sampling with a cache is not built yet)")
        b, n = xt.shape
        cond = None if z is None else z.reshape(b, self.blocks, -1)
        h = self.trunk(torch.cat([xt, x0], dim=1), cond=cond, mask=self.block_mask, pos=self.block_pos,
                       plain_groups=self.blocks if z is not None else 0)
        return self.head(h[:, :n])

    def encode(self, x0: torch.Tensor, masked: torch.Tensor):
        """The posterior q(z | x0, xt), per sequence or per block (batch x blocks rows); the encoder
        sees x0 and (by default) which positions are masked."""
        return self.encoder(x0, masked if self.encoder_sees_mask else torch.zeros_like(masked))

    def prior(self, xt: torch.Tensor, x0: torch.Tensor | None = None):
        """p(z), p(z | xt) or per block p(z_b | xt^b, x0^{<b}), as an object with ``sample`` and ``kl``."""
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
    """``layout``: optional (length, F) position structure from the task (see ``Trunk``)."""
    return MaskedDiffusionModel(cfg, vocab, length, layout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
