"""The bound of a k-step sampler (vmd/steps.py), the exact mixture (vmd/model/mixture.py) and the
prefix prior: each bound against a hand computation or brute-force enumeration, k = B against the
continuous NELBO, the sampler's own counts, and a mixture that learns what a product cannot."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny
from vmd import config as C
from vmd.blockwise import generate_blocks
from vmd.rng import sample_generators
from vmd.diffusion import diffusion_loss
from vmd.evaluate import evaluate, likelihood
from vmd.model import build_model
from vmd.sampling import generate
from vmd.schedule import LinearSchedule, make_schedule
from vmd.steps import remaining, step_states

VOCAB = 3


def scrambled(model, scale=0.5, seed=0):
    """Weights away from their initialisation (where the heads agree and adaLN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def one_block(method="mdm", length=3, **latent):
    cfg = tiny(method, kind="d1", latent={"prior": "normal", **latent})
    return cfg, scrambled(build_model(cfg, VOCAB, length))


def bound(model, cfg, x0, k, draws=1, seed=0, spread=False):
    """Per sequence, the k-step bound (nats), averaged over ``draws`` draws of the steps and orders
    (and with ``spread`` the standard error of that mean)."""
    diff = C.DiffusionConfig(steps=k)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        runs = torch.stack([diffusion_loss(model, x0, LinearSchedule(), diff, cfg.latent, step=10**6,
                                           generator=g).per_sequence for _ in range(draws)]).double()
    return (runs.mean(0), runs.std(0) / draws ** 0.5) if spread else runs.mean(0)


def all_sequences(length):
    return torch.tensor(list(itertools.product(range(VOCAB), repeat=length)))


def test_one_step_bound_of_a_product_model_is_the_sum_of_its_marginals_cross_entropies():
    cfg, m = one_block()
    x0 = all_sequences(3)
    with torch.no_grad():
        logp = torch.log_softmax(m(torch.full_like(x0, m.mask_id)), -1)
    by_hand = -logp.gather(2, x0[..., None]).squeeze(2).sum(1).double()
    torch.testing.assert_close(bound(m, cfg, x0, 1), by_hand, rtol=1e-5, atol=1e-5)


def test_two_step_bound_on_two_tokens_is_the_mean_over_both_orders():
    cfg, m = one_block(length=2)
    x0 = all_sequences(2)
    mask = m.mask_id
    with torch.no_grad():
        def nll(xt, i):
            return -torch.log_softmax(m(xt), -1)[torch.arange(len(x0)), i, x0[:, i]].double()
        empty = torch.full_like(x0, mask)
        first_a = torch.stack([x0[:, 0], torch.full_like(x0[:, 0], mask)], 1)  # token 0 shown
        first_b = torch.stack([torch.full_like(x0[:, 0], mask), x0[:, 1]], 1)
        by_hand = 0.5 * (nll(empty, 0) + nll(first_a, 1)) + 0.5 * (nll(empty, 1) + nll(first_b, 0))
    est, se = bound(m, cfg, x0, 2, draws=2000, spread=True)
    assert ((est - by_hand).abs() < 4 * se + 1e-6).all(), (est - by_hand) / se
    # and the bound is above the sampler's exact NLL: p(x) = mean over orders of the product
    exact = -torch.log(0.5 * torch.exp(-(nll(empty, 0) + nll(first_a, 1))) + 0.5 * torch.exp(-(nll(empty, 1) + nll(first_b, 0))))
    assert (by_hand >= exact - 1e-9).all()


def test_a_mixture_one_step_bound_is_its_exact_likelihood_by_enumeration():
    cfg, m = one_block("vmd", kind="mixture", components=4)
    x0 = all_sequences(3)
    nll = bound(m, cfg, x0, 1)
    assert float(torch.exp(-nll).sum()) == pytest.approx(1.0, abs=1e-5)  # a distribution over all 27
    with torch.no_grad():
        out = m(torch.full_like(x0, m.mask_id))
    by_hand = torch.zeros(len(x0), dtype=torch.float64)
    for c in range(4):  # sum_c pi_c prod_i p_c(x_i), one class at a time
        pc = out.log_p[:, :, c].gather(2, x0[..., None]).squeeze(2).sum(1)
        by_hand += torch.exp(out.log_pi[:, 0, c] + pc).double()
    torch.testing.assert_close(nll, -torch.log(by_hand), rtol=1e-5, atol=1e-5)
    # ... and it is what the one-step sampler draws: empirical frequencies of 40,000 samples
    xs = generate(m, torch.full((40000, 3), m.mask_id), nfe=1, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount((xs * torch.tensor([9, 3, 1])).sum(1), minlength=27).double() / len(xs)
    code = (x0 * torch.tensor([9, 3, 1])).sum(1)
    torch.testing.assert_close(freq[code], torch.exp(-nll), rtol=0, atol=0.01)
    # the marginal a product sampler would see is a proper distribution per position
    torch.testing.assert_close(out.marginal().exp().sum(-1), torch.ones(27, 3), rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset,block", [("shakespeare-bd3-block4", 4), ("shakespeare-mdm", 0)])
def test_one_token_a_step_equals_the_continuous_nelbo_in_expectation(preset, block):
    length = 8
    cfg = C.load(preset, None, ["model.dim=32", "model.layers=1", "model.heads=2", f"task.length={length}",
                                f"model.block_size={block}"])
    torch.manual_seed(0)
    m = scrambled(build_model(cfg, VOCAB, length), scale=0.3)
    x0 = torch.randint(0, VOCAB, (256, length), generator=torch.Generator().manual_seed(2))
    k = m.block_size  # one token a step
    a = likelihood(m, x0, cfg, draws=16, batch_size=256, steps=k)
    b = likelihood(m, x0, cfg, draws=16, batch_size=256, steps=0)
    assert abs(a["bits"] - b["bits"]) < 3 * math.hypot(a["stderr"], b["stderr"]) + 0.01
    assert a["steps"] == k and b["steps"] == 0


@pytest.mark.parametrize("length,k,given,schedule", [(7, 3, 0, "linear"), (8, 4, 0, "linear"), (5, 5, 0, "linear"),
                                                     (9, 2, 0, "linear"), (11, 4, 3, "linear"), (10, 3, 0, "cosine"),
                                                     (12, 5, 4, "cosine")])
def test_the_bound_reveals_what_the_sampler_reveals_at_each_step(length, k, given, schedule):
    sched = make_schedule(schedule)
    counts = remaining(torch.tensor([length - given]), k, sched)[0]
    cfg = tiny("mdm", kind="d1")
    m = build_model(cfg, VOCAB, length).eval()
    start = torch.full((1, length), m.mask_id)
    start[0, :given] = 0
    seen = []
    generate(m, start, nfe=k, schedule=sched, generator=torch.Generator().manual_seed(0),
             callback=lambda s: seen.append(int(s.revealed.sum())))
    assert [c for c in (counts[:-1] - counts[1:]).tolist() if c] == seen
    # and the states: before step j (uniform over the k), M_j of the free positions masked, of which the
    # step reveals M_j - M_{j+1}, and the scale k * n_j / M_j that makes one step stand for all k
    x0 = torch.zeros(3000, length, dtype=torch.long)
    gv = torch.zeros_like(x0, dtype=torch.bool)
    gv[:, :given] = True
    xt, masked, revealed, scale = step_states(x0, k, sched, 9, 1, gv, torch.Generator().manual_seed(0))
    assert not masked[:, :given].any()
    m_j = masked.sum(1)
    for j in range(k):
        rows = m_j == counts[j]
        if counts[j] == counts[j + 1] == 0:
            continue
        share = float(rows.double().mean())
        assert share == pytest.approx(sum(int(c == counts[j]) for c in counts[:-1]) / k, abs=0.03)
        n_j = int(counts[j] - counts[j + 1])
        assert (revealed[rows].sum(1) == n_j).all()
        torch.testing.assert_close(scale[rows, 0], torch.full((int(rows.sum()),), k * n_j / float(counts[j])))
    assert (revealed <= masked).all() and (xt[masked] == 9).all()


def block_vmd(**sets):
    over = {"model.dim": 32, "model.layers": 2, "model.heads": 2, "task.length": 16, "latent.encoder_dim": 32,
            "latent.prior_dim": 32, "latent.prior": "prefix", **sets}
    cfg = C.load("shakespeare-block4", None, [f"{k}={v}" for k, v in over.items()])
    torch.manual_seed(0)
    return cfg, scrambled(build_model(cfg, 11, 16), scale=0.3)


def test_the_prefix_prior_reads_no_token_of_its_own_block_or_later():
    cfg, m = block_vmd()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 11, (8, 16), generator=g)
    with torch.no_grad():
        base = m.prior(x0, x0)
        for b in range(4):  # change every token from block b on: the priors of blocks 0..b stay
            x1 = x0.clone()
            x1[:, 4 * b:] = torch.randint(0, 11, (8, 16 - 4 * b), generator=g)
            moved = m.prior(torch.full_like(x1, m.mask_id), x1)
            same = base.means.view(8, 4, -1)[:, :b + 1]
            torch.testing.assert_close(moved.means.view(8, 4, -1)[:, :b + 1], same, rtol=0, atol=1e-6)
            if b < 3:  # and the next block's prior does read block b
                assert not torch.allclose(moved.means.view(8, 4, -1)[:, b + 1], base.means.view(8, 4, -1)[:, b + 1])


@pytest.mark.parametrize("sets", [{}, {"latent.kind": "mixture", "latent.components": 4, "latent.prior": "normal"}])
def test_cached_and_uncached_sampling_agree_with_the_prefix_prior_and_the_mixture(sets):
    _, m = block_vmd(**sets)
    prompt = torch.tensor([3, 1, 4, 1, 5])
    kw = dict(steps_per_block=2, prompt=prompt, temperature=1.0)
    a = generate_blocks(m, 3, 16, cache=True, generator=sample_generators(7, 3), **kw)
    b = generate_blocks(m, 3, 16, cache=False, generator=sample_generators(7, 3), **kw)
    assert torch.equal(a, b) and (a[:, :5] == prompt).all()
    c = generate_blocks(m, 3, 16, cache=True, generator=sample_generators(8, 3), **kw)
    assert not torch.equal(a, c)  # another stream, another draw of z


def test_the_kl_of_a_prefix_prior_is_charged_once_per_block():
    cfg, m = block_vmd(**{"diffusion.steps": 2})
    x0 = torch.randint(0, 11, (32, 16), generator=torch.Generator().manual_seed(0))
    out = diffusion_loss(m, x0, LinearSchedule(), cfg.diffusion, cfg.latent, step=10**6,
                         generator=torch.Generator().manual_seed(1))
    assert float(out.latent_kl) > 0
    assert float(out.nelbo) == pytest.approx(float(out.recon + out.latent_kl), rel=1e-5)


def test_a_constant_latent_is_zero_everywhere_and_costs_nothing():
    cfg, m = block_vmd(**{"latent.constant": "true", "latent.prior": "normal"})
    x0 = torch.randint(0, 11, (16, 16), generator=torch.Generator().manual_seed(0))
    out = diffusion_loss(m, x0, LinearSchedule(), cfg.diffusion, cfg.latent, generator=torch.Generator().manual_seed(1))
    assert float(out.latent_kl) == 0.0
    a = generate_blocks(m, 2, 16, steps_per_block=4, temperature=0.0, generator=sample_generators(1, 2))
    b = generate_blocks(m, 2, 16, steps_per_block=4, temperature=0.0, generator=sample_generators(2, 2))
    assert torch.equal(a, b)  # argmax values, random order: z = 0 whatever the stream ... and the order
    assert not m.random_latent


def test_a_mixture_trained_for_one_step_samples_pairs_a_product_cannot(tmp_path):
    """(k, k + 1) pairs: a product model sampling both at once is right 1 time in 10; a 10-class
    mixture trained on the one-step bound gets them right, with no encoder and no KL."""
    from vmd.train import train

    results = {}
    for name, method, latent in (("mdm", "mdm", {}), ("mix", "vmd", {"kind": "mixture", "components": 10,
                                                                       "prior": "normal"})):
        cfg = tiny(method, kind="2tok", steps=250, latent=latent, diffusion={"steps": 1},
                   train={"lr": 3e-3}, sample={"nfe": 1, "num_samples": 4000, "batch_size": 4000})
        trainer = train(cfg, tmp_path / name)
        results[name] = evaluate(trainer.model.eval(), trainer.task, cfg, cfg.sample)["accuracy"]
    assert results["mdm"] < 0.3
    assert results["mix"] > 0.8, results


def test_mixture_heads_start_with_uniform_weights_and_differ_per_class():
    cfg = tiny("vmd", kind="d1", latent={"kind": "mixture", "components": 5, "prior": "normal"})
    m = build_model(cfg, VOCAB, 3)
    with torch.no_grad():
        out = m(torch.full((2, 3), m.mask_id))
    torch.testing.assert_close(out.log_pi.exp(), torch.full((2, 1, 5), 0.2))
    assert not torch.allclose(out.log_p[:, :, 0], out.log_p[:, :, 1])
    assert F.kl_div(out.marginal(), out.log_p[:, :, 0], log_target=True, reduction="sum") > 0


def test_a_step_s_own_z_pays_its_kl_once_per_step():
    cfg, m = block_vmd(**{"diffusion.steps": 2, "latent.prior": "normal", "latent.encoder_sees_mask": "true"})
    x0 = torch.randint(0, 11, (32, 16), generator=torch.Generator().manual_seed(0))
    out = diffusion_loss(m, x0, LinearSchedule(), cfg.diffusion, cfg.latent, step=10**6,
                         generator=torch.Generator().manual_seed(1))
    assert float(out.latent_kl) > 0
    assert float(out.nelbo - out.recon) == pytest.approx(2 * float(out.latent_kl), rel=1e-5)


def test_a_block_mixture_scores_each_block_s_set_by_its_own_classes():
    cfg, m = block_vmd(**{"latent.kind": "mixture", "latent.components": 3, "latent.prior": "normal"})
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 11, (4, 16), generator=g)
    xt = torch.where(torch.rand(x0.shape, generator=g) < 0.5, torch.full_like(x0, m.mask_id), x0)
    revealed = (xt == m.mask_id) & (torch.rand(x0.shape, generator=g) < 0.5)
    with torch.no_grad():
        out = m(xt, None, x0)
        got = out.set_nll(x0, revealed)
        for b in range(4):
            for blk in range(4):
                span = slice(4 * blk, 4 * blk + 4)
                total = 0.0
                for c in range(3):
                    lp = sum(float(out.log_p[b, i, c, x0[b, i]]) for i in range(16)[span] if revealed[b, i])
                    total += math.exp(float(out.log_pi[b, blk, c]) + lp)
                assert float(got[b, blk]) == pytest.approx(-math.log(total), abs=1e-5)
        logits, c = out.draw(torch.Generator().manual_seed(3))  # only the drawn class's head, per block
        picked = out.log_p.gather(2, c.repeat_interleave(4, 1)[:, :, None, None].expand(4, 16, 1, 11)).squeeze(2)
        torch.testing.assert_close(torch.log_softmax(logits, -1), picked, rtol=0, atol=1e-5)


def test_the_prefix_prior_reads_no_later_token_in_a_sliding_window_either():
    from vmd.blockwise import BlockView

    _, m = block_vmd()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 11, (2, 40), generator=g)  # past the model's 16 tokens: the window slides
    for index in (2, 5, 9):
        lo = 4 * index
        xb = torch.full((2, 4), m.mask_id)
        base = BlockView(m, x, index).sample_z(xb, torch.Generator().manual_seed(1))
        moved = x.clone()
        moved[:, lo:] = torch.randint(0, 11, (2, 40 - lo), generator=g)
        again = BlockView(m, moved, index).sample_z(torch.randint(0, 11, (2, 4), generator=g),
                                                     torch.Generator().manual_seed(1))
        torch.testing.assert_close(again, base, rtol=0, atol=1e-6)
        earlier = x.clone()
        earlier[:, lo - 4: lo] = (earlier[:, lo - 4: lo] + 1) % 11
        assert not torch.allclose(BlockView(m, earlier, index).sample_z(xb, torch.Generator().manual_seed(1)), base)


def test_the_constant_control_builds_no_encoder_and_a_long_prefix_prior_run_is_cached_exactly():
    _, held = block_vmd(**{"latent.constant": "true", "latent.prior": "normal"})
    assert held.encoder is None and held.prior_net is None
    _, m = block_vmd()
    kw = dict(steps_per_block=2, temperature=1.0)
    a = generate_blocks(m, 2, 44, cache=True, generator=sample_generators(4, 2), **kw)
    b = generate_blocks(m, 2, 44, cache=False, generator=sample_generators(4, 2), **kw)
    assert torch.equal(a, b)
