"""Block diffusion (BD3-LM) and block VMD: the attention pattern, the two limits (B = L is the
MDM, B = 1 is autoregressive), and that nothing flows from a later block to an earlier one."""

import pytest
import torch

from tests.conftest import tiny
from vmd import config as C
from vmd.runtime.errors import ConfigError
from vmd.diffusion import diffusion_loss
from vmd.model import build_model
from vmd.model.blocks import positions, training_mask
from vmd.schedule import make_schedule


def test_the_mask_matches_a_hand_written_one():
    # L = 8, B = 2: rows and columns 0-7 are the noisy half, 8-15 the clean half
    blk = [0, 0, 1, 1, 2, 2, 3, 3]
    want = torch.zeros(16, 16, dtype=torch.bool)
    for q in range(16):
        for k in range(16):
            qn, kn = q < 8, k < 8
            bq, bk = blk[q % 8], blk[k % 8]
            if qn and kn:
                want[q, k] = bq == bk
            elif qn and not kn:
                want[q, k] = bk < bq
            elif not qn and not kn:
                want[q, k] = bk <= bq
    assert torch.equal(training_mask(8, 2), want)
    assert positions(8).tolist() == list(range(8)) * 2


def model_for(length, block, method="mdm", positions_kind="learned", **latent):
    cfg = tiny(method, kind="d1", model={"dim": 32, "layers": 2, "heads": 2, "block_size": block,
                                         "positions": positions_kind},
               latent={"dim": 4, "encoder_layers": 1, **latent})
    torch.manual_seed(0)
    return build_model(cfg, 10, length).eval(), cfg


@pytest.mark.parametrize("rotary", ["learned", "rotary"])
def test_one_block_over_xt_and_x0_gives_the_plain_mdm_logits(rotary):
    model, _ = model_for(8, 0, positions_kind=rotary)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 10, (3, 8), generator=g)
    xt = torch.where(torch.rand(3, 8, generator=g) < 0.5, torch.full_like(x0, 10), x0)
    plain = model(xt)
    h = model.trunk(torch.cat([xt, x0], 1), mask=training_mask(8, 8), pos=positions(8))[:, :8]
    assert torch.allclose(model.head(h), plain, atol=1e-5)


def test_b_equal_to_l_is_the_mdm_loss_with_the_same_draws():
    mdm, cfg = model_for(4, 0)
    same, _ = model_for(4, 4)
    assert same.blocks == 1
    x0 = torch.randint(0, 10, (16, 4), generator=torch.Generator().manual_seed(2))
    a = diffusion_loss(mdm, x0, make_schedule("linear"), cfg.diffusion, cfg.latent, generator=torch.Generator().manual_seed(3))
    b = diffusion_loss(same, x0, make_schedule("linear"), cfg.diffusion, cfg.latent, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.per_sequence, b.per_sequence)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_one_token_per_block_is_the_exact_autoregressive_nll(schedule):
    model, cfg = model_for(8, 1)
    x0 = torch.randint(0, 10, (4, 8), generator=torch.Generator().manual_seed(4))
    masked = torch.full_like(x0, 10)
    logp = torch.log_softmax(model(masked, None, x0), -1)
    exact = -logp.gather(-1, x0[..., None]).squeeze(-1).sum(1)  # sum_i -log p(x_i | x_<i)
    for seed in (0, 1):  # no randomness left: every token is masked, with weight 1
        out = diffusion_loss(model, x0, make_schedule(schedule), cfg.diffusion, cfg.latent,
                             generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(out.per_sequence, exact, atol=1e-4)


@pytest.mark.parametrize("block", [1, 2, 4])
def test_a_later_block_never_changes_an_earlier_blocks_logits(block):
    model, _ = model_for(8, block, positions_kind="rotary")
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, 10, (2, 8), generator=g)
    xt = torch.where(torch.rand(2, 8, generator=g) < 0.5, torch.full_like(x0, 10), x0)
    cut = 4  # change everything from position 4 on (blocks after the first half)
    x0b, xtb = x0.clone(), xt.clone()
    x0b[:, cut:] = (x0b[:, cut:] + 3) % 10
    xtb[:, cut:] = torch.where(xt[:, cut:] == 10, 10, x0b[:, cut:])
    a, b = model(xt, None, x0), model(xtb, None, x0b)
    assert torch.allclose(a[:, :cut], b[:, :cut], atol=1e-6)
    assert not torch.allclose(a[:, cut:], b[:, cut:])  # (it does see its own block)


def test_block_vmd_each_latent_modulates_only_its_own_block_and_the_encoder_reads_no_later_block():
    model, cfg = model_for(8, 2, method="vmd", prior="conditional")
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # start the z path away from zero, as training moves it
        for p in model.trunk.cond.parameters():
            p.normal_(0, 0.5, generator=g)
    x0 = torch.randint(0, 10, (2, 8), generator=g)
    xt = torch.where(torch.rand(2, 8, generator=g) < 0.5, torch.full_like(x0, 10), x0)
    z = torch.randn(2, 4, 4, generator=g)  # (batch, blocks, d)
    z2 = z.clone()
    z2[:, 1] += 1.0  # block 1 is positions 2-3
    a, b = model(xt, z, x0), model(xt, z2, x0)
    changed = ~torch.isclose(a, b, atol=1e-6).all(-1)
    assert changed[:, 2:4].all() and not changed[:, :2].any() and not changed[:, 4:].any()
    masked = xt == 10
    q = model.encode(x0, masked).mean.view(2, 4, -1)
    x0b = x0.clone()
    x0b[:, 6:] = (x0b[:, 6:] + 1) % 10
    qb = model.encode(x0b, masked).mean.view(2, 4, -1)
    assert torch.allclose(q[:, :3], qb[:, :3], atol=1e-6) and not torch.allclose(q[:, 3], qb[:, 3])
    loss = diffusion_loss(model, x0, make_schedule("linear"), cfg.diffusion, cfg.latent,
                          generator=torch.Generator().manual_seed(0))
    assert loss.latent_kl > 0 and torch.isfinite(loss.loss)


def test_a_block_size_that_does_not_divide_the_length_is_one_clear_error():
    with pytest.raises(ConfigError, match="model.block_size \\(3\\) must divide the sequence length \\(4\\)"):
        model_for(4, 3)


def test_clipped_training_times_stay_in_range_and_evaluation_uses_the_full_range():
    from vmd.diffusion import block_times

    model, cfg = model_for(8, 2)
    diff = C.from_dict({"diffusion": {"clip": [0.3, 0.8]}}).diffusion
    t = block_times(64, model, diff, torch.Generator().manual_seed(0))
    assert t.shape == (64, 4) and t.min() >= 0.3 and t.max() < 0.8
    full = block_times(64, model, diff, torch.Generator().manual_seed(0), full_range=True)
    assert full.min() < 0.1 and full.max() > 0.9


@pytest.mark.parametrize("sets, words", [
    ({"task": {"name": "sudoku"}, "model": {"block_size": 9}}, "not sudoku"),
    ({"task": {"name": "sudoku"}, "model": {"positions": "rotary"}}, "keep learned"),
    ({"task": {"name": "text", "length": 30}, "model": {"block_size": 4}}, "must divide task.length (30)"),
])
def test_block_settings_a_task_cannot_take_are_refused_before_any_work(sets, words):
    with pytest.raises(ConfigError, match=words.replace("(", "\\(").replace(")", "\\)")):
        C.from_dict(sets)
