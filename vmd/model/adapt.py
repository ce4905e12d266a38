"""Starting a run from a trained model's weights (``train.init_from``, method.md §5).

The use that matters is adapting a trained MDM into a VMD. The VMD's denoiser takes the MDM's
weights; its encoder and prior start fresh; and its z path starts as the identity. The VMD's
blocks normalise without affine weights, because their adaLN supplies shift and scale. So each
MDM LayerNorm's weight and bias move into the bias of the adaLN's last layer, whose weight is
zero at initialisation. Before its first step, the VMD then gives the MDM's logits for every z.

``train.freeze_denoiser`` then trains only what reads or makes z (the adaLN, the encoder and
the prior). Any gain over the MDM must then come through z.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from vmd.runtime.errors import CheckpointError

_NORM = re.compile(r"trunk\.blocks\.(\d+)\.norm([12])\.(weight|bias)")


def load_weights(module: torch.nn.Module, state: dict, where,
                 problem: str = "weights do not match the saved config") -> None:
    """``module.load_state_dict(state, strict=True)``, a mismatch raised as one CheckpointError line."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "shapes or names differ"
        raise CheckpointError(f"{where}: {problem} ({first})") from e


def is_denoiser(name: str) -> bool:
    """Whether a parameter belongs to the denoiser proper, not to the z path, encoder or prior."""
    return (name.startswith("trunk.") and not name.startswith("trunk.cond.")) or name.startswith("head.")


def start_from(model: nn.Module, source: nn.Module, where: str) -> None:
    """Load ``source``'s weights into ``model``: all of them when both are MDMs or both VMDs
    (same config), or an MDM's denoiser into a VMD as the module docstring says."""
    src = source.state_dict()
    if bool(model.mixture) != bool(source.mixture) and not source.has_latent and not model.has_latent:
        if source.mixture:
            raise CheckpointError(f"train.init_from {where}: a mixture cannot start an MDM (it has no single head)")
        state = _mixture_from(model, src, where)
    elif source.has_latent or not model.has_latent:
        if source.has_latent != model.has_latent:
            raise CheckpointError(f"train.init_from {where}: a VMD cannot start an MDM (its denoiser reads z)")
        state = src
    else:
        state = dict(model.state_dict())  # encoder, prior and the z path as initialised
        layers, dim = len(model.trunk.blocks), model.trunk.norm.weight.shape[0]
        # the z readout's last layer: trunk.cond.2.bias after an MLP, trunk.cond.bias for one linear map
        out_bias = [k for k in state if k.startswith("trunk.cond.") and k.endswith("bias")][-1]
        mod_bias = state[out_bias].clone().view(layers, 6, dim)  # shift, scale-1, gate-1 per sub-layer
        for name, value in src.items():
            norm = _NORM.fullmatch(name)
            if norm:
                layer, slot = int(norm[1]), 3 * (int(norm[2]) - 1)
                if layer >= layers or value.shape != (dim,):
                    raise CheckpointError(f"train.init_from {where}: {name} does not fit this model "
                                          f"({layers} layers of width {dim})")
                mod_bias[layer, slot if norm[3] == "bias" else slot + 1] = value if norm[3] == "bias" else value - 1
            elif name in state and state[name].shape == value.shape:
                state[name] = value
            else:
                theirs = tuple(value.shape)
                ours = tuple(state[name].shape) if name in state else "absent"
                raise CheckpointError(f"train.init_from {where}: {name} is {theirs} there and {ours} here; "
                                      "the model settings must match the source's")
        state[out_bias] = mod_bias.flatten()
    load_weights(model, state, f"train.init_from {where}", "weights do not fit this model")


# the spread of a mixture's heads around the MDM head they start from, relative to its weights' spread:
# equal heads get equal gradients (each class is as responsible as the others) and would stay equal
HEAD_SPREAD = 0.1


def _mixture_from(model: nn.Module, src: dict, where: str) -> dict:
    """An MDM's weights for a mixture of the same denoiser (``latent.kind: mixture``): the trunk as
    it is, each of the K heads the MDM's head plus a little noise (from the global generator, which
    the run's seed set), the class weights uniform as initialised. Before its first step the
    mixture's marginal is then close to the MDM's."""
    state = dict(model.state_dict())
    for name, value in src.items():
        if name.startswith("head."):
            continue
        if name not in state or state[name].shape != value.shape:
            ours = tuple(state[name].shape) if name in state else "absent"
            raise CheckpointError(f"train.init_from {where}: {name} is {tuple(value.shape)} there and {ours} here; "
                                  "the model settings must match the source's")
        state[name] = value
    k = model.mixture
    weight, bias = src["head.weight"], src["head.bias"]
    if state["head.heads.weight"].shape != (k * weight.shape[0], weight.shape[1]):
        raise CheckpointError(f"train.init_from {where}: its head does not fit this model's vocabulary or width")
    noise = torch.randn(k, *weight.shape) * (HEAD_SPREAD * float(weight.std()))
    state["head.heads.weight"] = (weight[None] + noise).reshape(-1, weight.shape[1])
    state["head.heads.bias"] = bias.repeat(k)
    return state


def freeze_denoiser(model: nn.Module) -> list[nn.Parameter]:
    """Stop the denoiser's parameters from training; returns the ones that still train."""
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(not is_denoiser(name))
        if p.requires_grad:
            trainable.append(p)
    return trainable
