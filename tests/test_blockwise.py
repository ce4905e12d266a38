"""Block-by-block generation: the KV cache is exact (logits and text equal to recomputing the
prefix, and to the training pass), a one-block model samples as the plain sampler does, prompts
are kept, rotary models slide past their length and learned positions refuse to."""

import pytest
import torch

from vmd import config as C
from vmd.blockwise import generate_blocks
from vmd.rng import sample_generators
from vmd.runtime.errors import ConfigError
from vmd.model import build_model
from vmd.sampling import RowGenerators, generate

VOCAB, LENGTH = 11, 16


def model_for(preset="shakespeare-block4", **sets):
    over = {"model.dim": 32, "model.layers": 2, "model.heads": 2, "task.length": LENGTH, "latent.encoder_dim": 32,
            "latent.prior_dim": 32, **sets}
    cfg = C.load(preset, None, [f"{k}={v}" for k, v in over.items()])
    torch.manual_seed(0)
    m = build_model(cfg, VOCAB, LENGTH).eval()
    with torch.no_grad():  # away from initialisation, where adaLN is the identity and z would not matter
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def record(model, name):
    """Wrap ``model.name`` so that every logits tensor it returns is kept."""
    seen, fn = [], getattr(model, name)

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        seen.append(out.clone())
        return out

    setattr(model, name, wrapped)
    return seen


VMD, BD3 = "shakespeare-block4", "shakespeare-bd3-block4"


@pytest.mark.parametrize("preset,sets,z_policy", [
    (VMD, {}, "once"),  # block VMD, N(0, I) per block
    (VMD, {}, "step"),
    (VMD, {}, "posterior"),
    (VMD, {"latent.prior": "conditional", "model.positions": "learned"}, "once"),
    (VMD, {"latent.prior": "conditional", "model.positions": "learned"}, "posterior"),
    (BD3, {}, "once"),
    (BD3, {"model.block_size": 2}, "once"),
])
def test_cached_and_uncached_give_the_same_logits_at_every_step_and_the_same_text(preset, sets, z_policy):
    m = model_for(preset, **sets)
    cached, uncached = record(m, "block_logits"), record(m, "block_logits_uncached")
    prompt = torch.tensor([3, 1, 4, 1, 5])  # ends inside the second block
    kw = dict(steps_per_block=2, prompt=prompt, z_policy=z_policy, temperature=1.0)
    a = generate_blocks(m, 3, LENGTH, cache=True, generator=sample_generators(7, 3), **kw)
    b = generate_blocks(m, 3, LENGTH, cache=False, generator=sample_generators(7, 3), **kw)
    assert len(cached) == len(uncached) > LENGTH // m.block_size
    for x, y in zip(cached, uncached):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    assert torch.equal(a, b)
    assert (a[:, :5] == prompt).all() and (a != m.mask_id).all()


def test_cached_logits_equal_the_training_pass():
    m = model_for()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, VOCAB, (2, LENGTH), generator=g)
    z = torch.randn(2, m.blocks, m.latent_dim, generator=g)
    xt = torch.where(torch.rand(x0.shape, generator=g) < 0.6, torch.full_like(x0, m.mask_id), x0)
    full = m(xt, z, x0)  # block b's noisy tokens read x0 before b
    cache = m.new_cache()
    m.commit(x0[:, :4], cache)
    m.commit(x0[:, 4:8], cache)
    torch.testing.assert_close(m.block_logits(xt[:, 8:12], z[:, 2], cache), full[:, 8:12], rtol=0, atol=1e-5)
    # committing block 2 with block 3's step, in one pass
    torch.testing.assert_close(m.block_logits(xt[:, 12:16], z[:, 3], cache, commit=x0[:, 8:12]), full[:, 12:16],
                               rtol=0, atol=1e-5)
    assert cache.length == 12


def test_one_block_samples_as_the_plain_sampler():
    m = model_for("shakespeare-block4", **{"model.block_size": 0, "latent.prior": "normal"})
    assert m.blocks == 1
    a = generate_blocks(m, 4, LENGTH, steps_per_block=5, generator=sample_generators(3, 4))
    b = generate(m, torch.full((4, LENGTH), m.mask_id), nfe=5, generator=sample_generators(3, 4))
    assert torch.equal(a, b)


def test_a_sample_does_not_depend_on_its_batch():
    m = model_for()
    streams = sample_generators(5, 4)
    together = generate_blocks(m, 4, LENGTH, steps_per_block=1, generator=streams)
    alone = generate_blocks(m, 1, LENGTH, steps_per_block=1, generator=RowGenerators([sample_generators(5, 4).generators[2]]))
    assert torch.equal(together[2:3], alone)


def test_rotary_models_slide_past_their_length_and_learned_positions_refuse():
    m = model_for()
    cache_seen, ref_seen = record(m, "block_logits"), record(m, "block_logits_uncached")
    long = 3 * LENGTH + 2  # not a whole number of blocks: the last is cut
    a = generate_blocks(m, 2, long, steps_per_block=4, generator=sample_generators(0, 2))
    b = generate_blocks(m, 2, long, steps_per_block=4, generator=sample_generators(0, 2), cache=False)
    assert a.shape == (2, long) and torch.equal(a, b)
    for x, y in zip(cache_seen, ref_seen):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    learned = model_for(**{"model.positions": "learned"})
    with pytest.raises(ConfigError, match="past this model.s 16 learned positions"):
        generate_blocks(learned, 1, LENGTH + 4, steps_per_block=1)


def test_a_long_prompt_is_committed_through_the_window():
    m = model_for()
    prompt = torch.arange(2 * LENGTH + 4) % VOCAB  # longer than the window: committed block by block
    a = generate_blocks(m, 2, 3 * LENGTH, steps_per_block=2, prompt=prompt, generator=sample_generators(1, 2))
    b = generate_blocks(m, 2, 3 * LENGTH, steps_per_block=2, prompt=prompt, generator=sample_generators(1, 2),
                        cache=False)
    assert torch.equal(a, b) and (a[:, :prompt.numel()] == prompt).all()


@pytest.mark.parametrize("kw,words", [
    (dict(steps_per_block=0), "between 1 and the model's block size"),
    (dict(steps_per_block=5), "between 1 and the model's block size"),
    (dict(steps_per_block=1, prompt=torch.arange(LENGTH + 1) % VOCAB), "more than the length"),
])
def test_bad_settings_are_errors(kw, words):
    with pytest.raises(ConfigError, match=words):
        generate_blocks(model_for(), 1, LENGTH, **kw)
