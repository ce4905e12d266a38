"""The denoiser shared by MDM and VMD, with VMD's encoder and prior beside it."""

from __future__ import annotations

import torch
from torch import nn

from vmd.config import Config
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
        self.trunk = Trunk(vocab + 1, length, m.dim, m.layers, m.heads, m.mlp_ratio, m.dropout,
                           cond_dim=self.latent_dim, layout=layout, relation_bias=m.relation_bias,
                           cond_mlp=lat.adaln == "mlp")
        self.head = nn.Linear(m.dim, vocab)
        self.encoder = self.prior_net = self.classes = None
        if self.latent_dim:
            self.classes = (lat.groups, lat.components) if categorical else None
            self.encoder = Encoder(vocab, length, lat.dim, lat.encoder_dim, lat.encoder_layers, m.heads, self.classes, layout,
                                   m.relation_bias)
            if lat.prior == "conditional":
                self.prior_net = ConditionalPrior(vocab + 1, length, lat.dim, lat.components, lat.groups,
                                                  lat.prior_dim, lat.prior_layers, m.heads, categorical, layout,
                                                  m.relation_bias)

    @property
    def has_latent(self) -> bool:
        return self.latent_dim > 0

    def forward(self, xt: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.trunk(xt, cond=z))

    def encode(self, x0: torch.Tensor, masked: torch.Tensor):
        """The posterior q(z | x0, xt); the encoder sees x0 and (by default) which positions are masked."""
        return self.encoder(x0, masked if self.encoder_sees_mask else torch.zeros_like(masked))

    def prior(self, xt: torch.Tensor):
        """p(z) or p(z | xt), as an object with ``sample`` and ``kl``."""
        if self.prior_net is not None:
            return self.prior_net(xt)
        if self.classes:  # uniform over each variable's classes
            return Categorical(torch.zeros(xt.shape[0], *self.classes, device=xt.device))
        return StandardNormal(xt.shape[0], self.latent_dim, xt.device)

    def sample_z(self, xt: torch.Tensor, generator=None) -> torch.Tensor | None:
        """A latent drawn from the prior given the current sequence; None for an MDM."""
        if not self.has_latent:
            return None
        return self.prior(xt).sample(generator)


def build_model(cfg: Config, vocab: int, length: int, layout: torch.Tensor | None = None) -> MaskedDiffusionModel:
    """``layout``: optional (length, F) position structure from the task (see ``Trunk``)."""
    return MaskedDiffusionModel(cfg, vocab, length, layout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
