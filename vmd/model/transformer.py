"""A small bidirectional transformer: torch SDPA attention, optional adaLN conditioning.

One ``Trunk`` serves the denoiser f(xt, z), the encoder q(z | x0, xt) and the
conditional prior p(z | xt): token and position embeddings, pre-norm blocks and a
final norm. With ``cond_dim > 0`` every block's norms take a shift and a scale (and
each residual branch a gate) from the conditioning vector (adaLN, as in VADD/DiT);
one MLP (or with ``cond_mlp=False`` one linear map) computes the modulation of all
blocks at once, and it starts at zero, so at initialisation the blocks are plain blocks.

With a ``layout`` and ``relation_bias``, attention also knows how two positions relate:
each pair gets a relation id from the layout features the two share (for Sudoku: same
row, same column, same box, as bits), and each block's heads add a learned logit per
relation, zero at initialisation. A head can then attend to a cell's row, column or box
peers from the first step instead of first learning to read that off the embeddings.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


def _biased_attention(qkv, heads: int, bias, dropout_p: float):
    """softmax(q k^T / sqrt(d) + bias) v from the fused projection (B, L, 3 * dim), for CPU
    training, where the bias is learned.

    Given a float mask that needs a gradient, torch's SDPA takes its generic CPU path, which
    also scans the mask for rows of -inf (`isneginf`, `all`, `where`). Here each head is one
    ``baddbmm`` (scale and bias fused into the logits product) and one ``bmm``, on strided
    views of the projection: q, k and v are never copied into a head-major layout, and only
    the heads' outputs are joined (11% less attention time in training). Same result within
    float rounding. Where the bias needs no gradient (solving, sampling), SDPA's fused CPU
    kernel takes it as a 4-D mask and is faster still (``Block.attention``).
    """
    b, n, three_dim = qkv.shape
    d = three_dim // (3 * heads)
    parts = qkv.view(b, n, 3 * heads, d).unbind(2)  # one backward (a stack), where slices would zero-fill
    outs = []
    for i in range(heads):
        q, k, v = parts[i], parts[heads + i], parts[2 * heads + i]
        weights = torch.baddbmm(bias[i], q, k.transpose(1, 2), alpha=d ** -0.5).softmax(dim=-1)
        if dropout_p:
            weights = F.dropout(weights, dropout_p)
        outs.append(torch.bmm(weights, v))
    return torch.cat(outs, dim=-1)


@functools.cache
def _probe_fused_linear() -> bool:
    """Whether oneDNN's fused linear (+ GELU) op exists here and agrees with the plain ops (asked once)."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            x, w, b = (torch.randn(*s, generator=g) for s in ((5, 8), (16, 8), (16,)))
            ok = torch.allclose(op(x, w, b, "gelu", [], "none"), F.gelu(F.linear(x, w, b)), atol=1e-5)
            return ok and torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5)
    except (RuntimeError, TypeError):
        return False


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


def fused_linear_applies(h: torch.Tensor) -> bool:
    """Inference in fp32 on the CPU, outside autocast, where the fused op exists."""
    if torch.is_grad_enabled() or h.device.type != "cpu" or h.dtype != torch.float32 or _cpu_autocast():
        return False
    return _probe_fused_linear()


def rotary_tables(pos: torch.Tensor, head_dim: int, base: float = 10000.0):
    """(cos, sin), each (N, head_dim), of rotary position embeddings (RoPE) at positions ``pos``:
    dimension pairs (i, i + head_dim / 2) turn by pos * base^(-2i / head_dim)."""
    inv = base ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angles = pos.float()[:, None] * inv[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (..., N, head_dim) queries or keys."""
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + turned * sin).to(x.dtype)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float, modulated: bool = False):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        affine = not modulated
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=affine)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=affine)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        if modulated:  # the modulation predicts scale - 1 and gate - 1 (zero at initialisation): add the 1s once
            one = torch.zeros(6, dim)
            one[[1, 2, 4, 5]] = 1.0
            self.register_buffer("_one", one.flatten(), persistent=False)
            # the norms' affine is the modulation's; torch's CPU layer norm without a weight and bias
            # runs about 2x slower than with them (220 against 117 us at 64 x 81 x 96), so it gets a
            # constant unit weight and zero bias: the same values, exactly
            self.register_buffer("_unit", torch.ones(dim), persistent=False)
            self.register_buffer("_zero", torch.zeros(dim), persistent=False)

    def attention(self, h: torch.Tensor, bias: torch.Tensor | None, rope=None, cache=None,
                  layer: int = 0) -> torch.Tensor:
        """``bias``: a float (heads, L, L) added to the logits, or a bool (L, L) mask (True: may
        attend); ``rope``: (cos, sin) of the positions, rotating queries and keys. With a ``cache``
        (``vmd.model.blocks.KVCache``) the tokens also attend to its keys and values of ``layer``
        first (a bool mask is then (L, cached + L)); theirs are written after them."""
        b, n, d = h.shape
        qkv = self.linear(self.qkv, h)
        p = self.dropout if self.training else 0.0
        if bias is not None and bias.is_floating_point():  # under autocast the projection may be in half precision
            bias = bias.to(qkv.dtype)
        if bias is not None and bias.requires_grad and qkv.device.type == "cpu" and rope is None and cache is None:
            out = _biased_attention(qkv, self.heads, bias, p)
        else:
            # a bias as (1, heads, L, L): SDPA's fused CPU kernel takes a 4-D float mask (a 3-D one sends
            # it to the generic path); a Sudoku solve's attention is 1.4x faster than the per-head products
            q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            if rope is not None:
                q, k = rotate(q, *rope), rotate(k, *rope)
            if cache is not None:
                k, v = cache.attend(layer, k, v)
            mask = None if bias is None else bias[None] if bias.dim() == 3 else bias
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            out = out.transpose(1, 2).reshape(b, n, d)
        return self.linear(self.proj, out)

    @staticmethod
    def linear(layer: nn.Linear, h: torch.Tensor, activation: str = "none") -> torch.Tensor:
        """``layer(h)`` (then GELU with ``activation="gelu"``). In CPU inference one oneDNN call
        with the bias (and the GELU) fused: the plain op first copies the bias into every output
        row, and the GELU writes the hidden activations again. Same values within rounding; the
        bundled Sudoku models solve 11-14% more puzzles/s from the MLP's first layer, and the MDM
        6-7% more from the attention's projections (docs/sudoku-history.md)."""
        if not fused_linear_applies(h):
            return F.gelu(layer(h)) if activation == "gelu" else layer(h)
        algorithm = "none" if activation == "gelu" else ""  # exact GELU (erf), as nn.GELU()
        flat = h.reshape(-1, h.shape[-1])
        return torch.ops.mkldnn._linear_pointwise(flat, layer.weight, layer.bias, activation, [], algorithm
                                                  ).view(*h.shape[:-1], -1)

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        """``self.mlp(h)``, layer by layer through ``linear`` (its GELU is exact, as ``mlp[1]``)."""
        return self.linear(self.mlp[2], self.linear(self.mlp[0], h, "gelu"))

    def forward(self, x, mod=None, bias=None, rope=None, cache=None, layer: int = 0):
        """``mod``: (B, 6 * dim) shift, scale and gate for both sub-layers, or (B, G, 6 * dim) one
        per group of consecutive positions (a block's latent, block diffusion), or None; ``bias``,
        ``rope`` and the cache arguments as ``attention`` takes them."""
        attend = functools.partial(self.attention, bias=bias, rope=rope, cache=cache, layer=layer)
        if mod is None:
            x = x + attend(self.norm1(x))
            return x + self.feed_forward(self.norm2(x))
        b, n, d = x.shape
        if mod.dim() == 2:
            mod = mod[:, None, :]
        g = mod.shape[1]

        def grouped(t):  # (B, N, d) as (B, G, N / G, d), against the groups' (B, G, 1, d) modulations
            return t.view(b, g, n // g, d)

        # one fused multiply-add per modulation: addcmul(a, b, c) = a + b * c
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod[:, :, None, :] + self._one).chunk(6, dim=-1)
        h = torch.addcmul(shift1, grouped(self._normed(self.norm1, x)), scale1).view(b, n, d)
        x = torch.addcmul(grouped(x), gate1, grouped(attend(h))).view(b, n, d)
        h = torch.addcmul(shift2, grouped(self._normed(self.norm2, x)), scale2).view(b, n, d)
        return torch.addcmul(grouped(x), gate2, grouped(self.feed_forward(h))).view(b, n, d)

    def _normed(self, norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        """A modulated block's norm (no affine of its own) with the unit weight and zero bias."""
        return F.layer_norm(x, norm.normalized_shape, self._unit, self._zero, norm.eps)


class Trunk(nn.Module):
    """Embeddings + blocks + final norm. ``tokens`` counts every input id (mask included)."""

    def __init__(self, tokens: int, length: int, dim: int, layers: int, heads: int,
                 mlp_ratio: int = 4, dropout: float = 0.0, cond_dim: int = 0, flags: int = 0,
                 layout: torch.Tensor | None = None, relation_bias: bool = False, cond_mlp: bool = True,
                 rotary: bool = False):
        super().__init__()
        self.head_dim = dim // heads
        self.tok = nn.Embedding(tokens, dim)
        # tokens and positions start at the same small scale (GPT-2's 0.02): with torch's N(0, 1)
        # token init, the positions are 2% of the first block's input and structure (a Sudoku
        # cell's row, column and box) is learned several times slower
        nn.init.normal_(self.tok.weight, std=0.02)
        # positions: one learned vector each, or with a ``layout`` (length, F) of ids the sum of F
        # learned vectors (a Sudoku cell = its row + its column + its box)
        # (or with ``rotary`` none here: RoPE turns each attention's queries and keys instead)
        self.rotary = rotary
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.02) if layout is None and not rotary else None
        self.layout_emb = None
        if layout is not None:
            self.register_buffer("layout", layout.long(), persistent=False)
            self.layout_emb = nn.Embedding(int(layout.max()) + 1, dim)
            nn.init.normal_(self.layout_emb.weight, std=0.02)
        # optional per-position binary flags (e.g. "this position is masked" for the encoder)
        self.flag = nn.Embedding(2, dim) if flags else None
        self.cond = None
        if cond_dim:
            out = nn.Linear(dim if cond_mlp else cond_dim, layers * 6 * dim)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.cond = nn.Sequential(nn.Linear(cond_dim, dim), nn.SiLU(), out) if cond_mlp else out
        self.relation_logits = None
        if relation_bias:
            if layout is None:
                raise ValueError("relation_bias needs a layout: the task gives its positions no structure")
            shared = (layout[:, None, :] == layout[None, :, :]).long()  # (L, L, F): which features two positions share
            self.register_buffer("relation", (shared << torch.arange(layout.shape[1])).sum(-1), persistent=False)
            self.relation_logits = nn.Parameter(torch.zeros(layers, heads, 2 ** layout.shape[1]))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, modulated=bool(cond_dim)) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def positions(self, length: int, pos: torch.Tensor | None = None) -> torch.Tensor:
        """The learned position vectors of positions 0..length-1, or of ``pos``."""
        table = self.pos if self.layout_emb is None else self.layout_emb(self.layout).sum(1)
        return table[:length] if pos is None else table[pos]

    def forward(self, ids, cond=None, flags=None, mask=None, pos=None, plain_groups: int = 0, cache=None,
                keep: int = 0):
        """``cond``: (B, cond_dim), or (B, G, cond_dim) one per group of consecutive positions, then
        ``plain_groups`` more groups that get no modulation at all (before them if negative: the
        groups are all the same size); ``mask``: a bool (N, N) attention
        mask (True: may attend); ``pos``: (N,) each token's position (default 0..N-1, or after a
        ``cache``'s tokens). ``cache``: a ``KVCache`` of earlier tokens that these attend to as well
        (``mask`` then (N, cached + N)); the keys and values of the first ``keep`` tokens are kept in it."""
        n_tok = ids.shape[1]
        if pos is None and cache is not None:
            pos = torch.arange(cache.length, cache.length + n_tok, device=ids.device)
        h = self.tok(ids)
        rope = None
        if self.rotary:
            rope = rotary_tables(torch.arange(n_tok, device=ids.device) if pos is None else pos, self.head_dim)
        else:
            h = h + self.positions(n_tok, pos)
        if self.flag is not None:
            h = h + self.flag(flags.long())
        n = len(self.blocks)
        mods = [None] * n
        if self.cond is not None and cond is not None:  # (no cond: unmodulated, as a block model's clean half)
            out = self.cond(cond)
            if plain_groups:  # zero modulation is the identity (shift 0, scale and gate 1)
                zero = out.new_zeros(out.shape[0], abs(plain_groups), out.shape[-1])
                out = torch.cat([out, zero] if plain_groups > 0 else [zero, out], dim=1)
            mods = out.chunk(n, dim=-1)
        biases = [mask] * n
        if self.relation_logits is not None:  # (layers, heads, R)[relation] -> per block (heads, L, L)
            biases = self.relation_logits[:, :, self.relation].unbind(0)
        for i, (block, mod, bias) in enumerate(zip(self.blocks, mods, biases)):
            h = block(h, mod, bias, rope, cache, i)
        if keep:
            cache.advance(keep)
        return self.norm(h)

    def pooled(self, ids, flags=None):
        """``forward(ids, flags=flags).mean(1)``, the input of a pooled encoder or prior.

        With no blocks, a position's output depends on its own (position, token, flag) alone, so
        every output is a row of a small table (length x tokens x flags): the final norm runs on
        that table, not on batch x length rows, and the mean is each sequence's row counts times
        the table (the synthetic VMDs' encoder and prior; same values, 0.5-1 ms of a 16 ms step)."""
        if len(self.blocks) or self.rotary:  # (rotary positions live in attention: without blocks, none)
            return self.forward(ids, flags=flags).mean(1)
        b, n = ids.shape
        v, d = self.tok.weight.shape
        table = self.tok.weight + self.positions(n)[:, None]  # (n, v, d)
        row = torch.arange(n, device=ids.device) * v + ids  # (b, n) row of each position's output
        if self.flag is not None:
            table = table[:, :, None] + self.flag.weight  # (n, v, 2, d)
            row = row * 2 + flags.long()
        table = self.norm(table.reshape(-1, d))
        counts = table.new_zeros(b, table.shape[0]).scatter_add_(1, row, table.new_full(row.shape, 1.0 / n))
        return counts @ table
