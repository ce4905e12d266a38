import math

import pytest
import torch

from tests.conftest import tiny
from vmd.evaluate import latent_stats
from vmd.model import build_model
from vmd.tasks import make_task
from vmd.model.latent import Categorical, Gaussian, Mixture, StandardNormal, gaussian_kl, gaussian_log_prob


def test_gaussian_kl_matches_monte_carlo():
    mu_q, lv_q, mu_p, lv_p = torch.tensor([0.5]), torch.tensor([-1.0]), torch.tensor([-0.3]), torch.tensor([0.4])
    z = mu_q + torch.exp(0.5 * lv_q) * torch.randn(200000, 1)
    mc = (gaussian_log_prob(z, mu_q, lv_q) - gaussian_log_prob(z, mu_p, lv_p)).mean()
    assert float(gaussian_kl(mu_q, lv_q, mu_p, lv_p)) == pytest.approx(float(mc), abs=0.01)


def grouped_mixture():
    # 2 groups x 3 parts x 2 dims, one sequence
    logits = torch.tensor([[[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]]])
    means = torch.tensor([[[[-4.0, 0.0], [0.0, 0.0], [4.0, 0.0]], [[0.0, -4.0], [0.0, 0.0], [0.0, 4.0]]]])
    logvars = torch.full((1, 2, 3, 2), -3.0)
    return Mixture(logits, means, logvars)


def test_grouped_mixture_samples_each_group_by_its_weights():
    m = grouped_mixture()
    big = Mixture(m.logits.expand(50000, -1, -1), m.means.expand(50000, -1, -1, -1), m.logvars.expand(50000, -1, -1, -1))
    z = big.sample(torch.Generator().manual_seed(0))
    assert z.shape == (50000, 4)
    part0 = torch.bucketize(z[:, 0].contiguous(), torch.tensor([-2.0, 2.0]))  # which part group 0 drew
    part1 = torch.bucketize(z[:, 3].contiguous(), torch.tensor([-2.0, 2.0]))
    freq0 = torch.bincount(part0, minlength=3).double() / 50000
    freq1 = torch.bincount(part1, minlength=3).double() / 50000
    assert torch.allclose(freq0, torch.softmax(m.logits[0, 0].double(), 0), atol=0.01)
    assert torch.allclose(freq1, torch.softmax(m.logits[0, 1].double(), 0), atol=0.01)


def test_grouped_mixture_log_prob_is_the_product_of_group_mixtures():
    m = grouped_mixture()
    z = torch.tensor([[3.5, 0.2, 0.1, -3.8]])
    expected = 0.0
    for g, dims in enumerate(([0, 1], [2, 3])):
        w = torch.softmax(m.logits[0, g], 0)
        dens = sum(w[k] * gaussian_log_prob(z[0, dims], m.means[0, g, k], m.logvars[0, g, k]).sum().exp() for k in range(3))
        expected += math.log(float(dens))
    assert float(m.log_prob(z)) == pytest.approx(expected, rel=1e-5)


def test_one_part_kl_is_exact_per_dimension_and_normal_prior_agrees():
    mu, lv = torch.randn(5, 4), torch.randn(5, 4) * 0.3
    one = Mixture(torch.zeros(5, 2, 1), torch.zeros(5, 2, 1, 2), torch.zeros(5, 2, 1, 2))
    kl = one.kl(Gaussian(mu, lv))
    assert kl.shape == (5, 4)
    assert torch.allclose(kl, StandardNormal(5, 4, "cpu").kl(Gaussian(mu, lv)))



def test_mixture_kl_bound_is_above_the_true_kl_and_tight_when_parts_are_apart():
    m = grouped_mixture()  # parts 4 apart with standard deviation exp(-1.5) = 0.22: well separated
    for mu, lv in ((torch.tensor([[3.8, 0.1, 0.0, -4.1]]), torch.full((1, 4), -3.5)),
                   (torch.tensor([[2.0, 0.0, 0.0, 2.0]]), torch.full((1, 4), 0.0))):  # between parts
        bound = m.kl(Gaussian(mu, lv)).sum()
        z = mu + torch.exp(0.5 * lv) * torch.randn(400000, 4)
        true = (gaussian_log_prob(z, mu, lv).sum(-1) - m.log_prob(z)).mean()
        assert m.kl(Gaussian(mu, lv)).shape == (1, 2)
        assert float(bound) >= float(true) - 0.02
    near = m.kl(Gaussian(torch.tensor([[4.0, 0.0, 0.0, -4.0]]), torch.full((1, 4), -3.0))).sum()
    # on a part's own mean and spread, the KL is -log of its weights: groups pick parts 2 and 0
    expected = -torch.log_softmax(m.logits[0, 0], 0)[2] - torch.log_softmax(m.logits[0, 1], 0)[0]
    assert float(near) == pytest.approx(float(expected), abs=1e-3)


def test_categorical_kl_is_exact_and_samples_follow_the_probabilities():
    q = Categorical(torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]]))  # two variables of three classes
    p = Categorical(torch.tensor([[[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]]]))
    pq, pp = torch.softmax(q.logits, -1), torch.softmax(p.logits, -1)
    assert torch.allclose(p.kl(q), (pq * (pq / pp).log()).sum(-1))
    assert torch.allclose(q.kl(q), torch.zeros(1, 2), atol=1e-6)
    big = Categorical(q.logits.expand(40000, -1, -1))
    gen = torch.Generator().manual_seed(0)
    draws = big.sample(gen)
    assert draws.shape == (40000, 6) and torch.all(draws.view(-1, 2, 3).sum(-1) == 1)  # one-hot per variable
    assert torch.allclose(draws.mean(0), q.mean[0], atol=0.01)


def test_categorical_rsample_is_one_hot_forward_and_passes_gradients():
    logits = torch.randn(8, 2, 5, requires_grad=True)
    z = Categorical(logits).rsample(torch.Generator().manual_seed(1))
    assert torch.all((z == 0) | (z == 1)) and torch.all(z.view(8, 2, 5).sum(-1) == 1)
    (z * torch.arange(10.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_z_gain_is_zero_for_a_denoiser_that_ignores_z():
    cfg = tiny("vmd", kind="d1")
    model = build_model(cfg, 10, 4).eval()
    with torch.no_grad():  # zero modulation: the denoiser's output does not depend on z
        model.trunk.cond[-1].weight.zero_()
    x0, given = make_task(cfg.task).train_batch(512, torch.Generator().manual_seed(0))
    stats = latent_stats(model, x0, given, cfg)
    assert abs(stats["z_gain"]) < 1e-5 and stats["latent_kl"] > 0


@pytest.mark.parametrize("flags, layout", [(False, False), (True, False), (True, True)])
def test_pooled_trunk_without_blocks_matches_the_mean_of_its_outputs(flags, layout):
    # zero-layer trunks (the synthetic encoder and prior) pool through a (position, token, flag) table
    from vmd.model.transformer import Trunk

    lay = torch.stack([torch.arange(6) // 2, torch.arange(6) % 2], 1) if layout else None
    trunk = Trunk(7, 6, 16, 0, 2, flags=2 if flags else 0, layout=lay)
    for p in trunk.parameters():  # away from the initial values, so that every term shows
        p.data.normal_()
    ids, on = torch.randint(0, 7, (50, 6)), torch.rand(50, 6) < 0.5
    fast = trunk.pooled(ids, flags=on)
    grads_fast = torch.autograd.grad(fast.pow(2).sum(), list(trunk.parameters()))
    slow = trunk(ids, flags=on).mean(1)
    grads_slow = torch.autograd.grad(slow.pow(2).sum(), list(trunk.parameters()))
    assert torch.allclose(fast, slow, atol=1e-5)
    for a, b in zip(grads_fast, grads_slow):
        assert torch.allclose(a, b, atol=1e-4)
