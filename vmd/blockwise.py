"""Block-by-block generation (BD3-LM's sampler, method.md §3-4) with an exact KV cache.

Blocks of ``model.block_size`` tokens are made left to right. Inside a block, the sampler of
``vmd.sampling.generate`` runs as it does for a whole sequence (the unmasking schedule, the
strategies, the z policies), with ``steps_per_block`` steps; a block VMD draws its block's own
latent z_b. Each step runs the model on the current block only: the clean prefix is held in a
``KVCache`` (vmd/model/blocks.py), and each finished block is committed to it once, in the
same pass as the next block's first step (so a block costs its steps, no extra pass). With
``cache=False`` every step recomputes the whole prefix in the same pass instead: the
reference the cache is tested and timed against (same logits within float rounding).

A prompt fills the first positions and is never changed. Its whole blocks are committed in one
pass; if it ends inside a block, that block's prompt tokens are held as already-revealed tokens
and the rest of the block is generated around them (as a partly unmasked block is in training).

A model with rotary positions generates past its training length: the cache then keeps a
sliding window of ``length - block_size`` tokens, the most context a block ever has in training.
A model with learned positions refuses to. A plain MDM (one block) is one call of ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vmd.runtime.errors import ConfigError
from vmd.model.latent import select_rows
from vmd.rng import sample_generators  # noqa: F401 (imported from here too)
from vmd.sampling import generate
from vmd.schedule import Schedule


@dataclass
class BlockStep:
    """What a step callback sees: after step ``index`` of ``steps`` in block ``block`` (a plain
    MDM: block 0, the whole sequence). ``x`` and ``revealed`` cover the whole sequence."""

    block: int
    index: int
    steps: int
    x: torch.Tensor  # (N, total) the sequence so far, the mask id where still masked or not yet made
    revealed: torch.Tensor  # (N, total) bool: positions filled in this step
    z: torch.Tensor | None


class BlockView:
    """Block ``index`` of the sequence ``x`` as ``generate`` sees a model: ``view(xb, z)`` gives the
    block's logits (from the cache, or recomputing the prefix), ``sample_z`` and ``encode`` the
    block's prior and posterior, read from the window of ``model.length`` tokens that ends with
    the block (or starts the sequence), as in training."""

    def __init__(self, model, x: torch.Tensor, index: int, cache=None, commit: torch.Tensor | None = None):
        self.model, self.x, self.index, self.cache = model, x, index, cache
        self.commit = commit  # the previous block, committed with this block's first step
        self.mask_id, self.has_latent = model.mask_id, model.has_latent
        self.lo = index * model.block_size

    def __call__(self, xb: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        m = self.model
        if self.cache is not None:
            commit, self.commit = self.commit, None
            return m.block_logits(xb, z, self.cache, commit)
        return m.block_logits_uncached(self.x[:, :self.lo], xb, z, m.cache_window)

    def _window(self, xb: torch.Tensor, source: torch.Tensor, pad: int):
        """The model-length window of ``source`` holding the block, ``xb`` in the block's place and
        ``pad`` past the end; and the block's rows among its batch x blocks latents."""
        m, bs = self.model, self.model.block_size
        end = self.lo + bs
        start = max(0, end - m.length)
        w = source[:, start: start + m.length].clone()
        w[:, self.lo - start: end - start] = xb
        if w.shape[1] < m.length:
            w = torch.cat([w, w.new_full((w.shape[0], m.length - w.shape[1]), pad)], 1)
        rows = torch.arange(w.shape[0], device=w.device) * m.blocks + (self.lo - start) // bs
        return w, rows

    def sample_z(self, xb: torch.Tensor, generator=None) -> torch.Tensor | None:
        if not self.has_latent:
            return None
        w, rows = self._window(xb, self.x, self.mask_id)
        return select_rows(self.model.prior(w, w), rows).sample(generator)

    def encode(self, x0: torch.Tensor, masked: torch.Tensor):
        """q(z_b | x0^b, xt^b, x0^{<b}) with the committed prefix as x0^{<b} (shown unmasked)."""
        clean = self.x.clamp(max=self.mask_id - 1)  # (past the block: never read, the encoder is block-causal)
        w, rows = self._window(x0, clean, 0)
        flags, _ = self._window(masked.long(), torch.zeros_like(self.x), 0)
        return select_rows(self.model.encode(w, flags.bool()), rows)


MAX_LENGTH = 1_000_000  # tokens a sample may have: bounds the memory a length can ask for


def check_generation(model, length: int, steps_per_block: int, prompt_tokens: int = 0,
                     names: tuple[str, str] = ("the length", "steps per block")) -> None:
    """A generation's numbers against the model, before any work: a ``ConfigError`` naming the first
    that does not fit. ``generate_blocks`` runs it; ``vmd sample``, ``vmd eval`` and ``vmd play`` run
    it first, so that their error is this one line, with ``names`` their options for the length and
    the steps per block (e.g. ``("--length", "--steps-per-block")``)."""
    bs, (length_is, steps_are) = model.block_size, names
    if length < 1:
        raise ConfigError(f"{length_is} must be at least 1 token, got {length}")
    if length > MAX_LENGTH:
        raise ConfigError(f"{length_is} {length:,} is more than the {MAX_LENGTH:,} tokens a sample may have (each "
                          "sample's tokens are held in memory from the start)")
    if not 1 <= steps_per_block <= bs:
        raise ConfigError(f"{steps_are} must be between 1 and the model's block size, {bs}, got {steps_per_block}"
                          + (" (a one-block model: its steps over the whole sequence)" if model.blocks == 1 else ""))
    if prompt_tokens > length:
        raise ConfigError(f"the prompt has {prompt_tokens} tokens, more than {length_is} {length}")
    if model.blocks == 1 and length > model.length:
        raise ConfigError(f"a one-block model (MDM) makes sequences of its length, {model.length} tokens: "
                          f"{length_is} {length} is out of its reach")
    if length > model.length and not model.trunk.rotary:
        raise ConfigError(f"{length_is} {length} is past this model's {model.length} learned positions (a model "
                          "trained with model.positions: rotary slides past its length)")


@torch.no_grad()
def generate_blocks(model, n: int, length: int, *, steps_per_block: int, prompt: torch.Tensor | None = None,
                    strategy: str = "random", temperature: float = 1.0, z_policy: str = "once",
                    schedule: Schedule | None = None, generator=None, cache: bool = True,
                    on_block: Callable[[int, torch.Tensor], None] | None = None,
                    on_step: Callable[[BlockStep], None] | None = None, device=None) -> torch.Tensor:
    """``n`` sequences (n, length) of token ids, generated block by block after ``prompt`` (1-D ids).

    ``on_block(index, x)`` after each block is made (``x``: (n, total) so far, whole blocks);
    ``on_step(BlockStep)`` after each step that reveals something. ``generator``: a
    ``torch.Generator`` or ``RowGenerators`` (one stream per sample: ``sample_generators``)."""
    device = device if device is not None else next(model.parameters()).device
    bs = model.block_size
    prompt = torch.zeros(0, dtype=torch.long) if prompt is None else prompt.long().reshape(-1)
    p = prompt.numel()
    check_generation(model, length, steps_per_block, p)
    total = model.length if model.blocks == 1 else -(-length // bs) * bs
    model.reach(total)
    x = torch.full((n, total), model.mask_id, dtype=torch.long, device=device)
    x[:, :p] = prompt.to(device)
    kv = model.new_cache() if cache and model.blocks > 1 else None
    first = p // bs if model.blocks > 1 else 0  # the prompt's whole blocks are committed as they are
    if kv is not None and first:
        model.commit(x[:, :first * bs], kv)
    pending = None  # the last block made, not yet committed
    for index in range(first, total // bs):
        lo = index * bs

        def seen(step, index=index, lo=lo):
            full = torch.zeros_like(x, dtype=torch.bool)
            full[:, lo: lo + bs] = step.revealed
            shown = x.clone()
            shown[:, lo: lo + bs] = step.x
            on_step(BlockStep(index, step.index, step.nfe, shown, full, step.z))

        view = model if model.blocks == 1 else BlockView(model, x, index, kv, pending)
        x[:, lo: lo + bs] = generate(view, x[:, lo: lo + bs], nfe=steps_per_block, strategy=strategy,
                                     temperature=temperature, z_policy=z_policy, schedule=schedule,
                                     generator=generator, callback=seen if on_step is not None else None)
        if kv is not None:
            if view.commit is not None:  # no step ran the model (nothing was masked)
                model.commit(view.commit, kv)
            pending = x[:, lo: lo + bs].clone()
        if on_block is not None:
            on_block(index, x)
    return x[:, :length]
