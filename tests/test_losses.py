import math

import pytest
import torch

from tests.conftest import tiny
from vmd.diffusion import diffusion_loss, kl_weight
from vmd.model import build_model
from vmd.schedule import LinearSchedule


def loss_for(cfg, seed=0, n=256):
    torch.manual_seed(seed)
    model = build_model(cfg, 10, 4)
    x0 = torch.randint(0, 10, (n, 4), generator=torch.Generator().manual_seed(1))
    out = diffusion_loss(model, x0, LinearSchedule(), cfg.diffusion, cfg.latent, step=10**6,
                         generator=torch.Generator().manual_seed(2))
    return model, out


def test_mdm_loss_has_no_latent_term_and_bits_follow_nats():
    _, out = loss_for(tiny("mdm", kind="d1"))
    assert float(out.latent_kl) == 0.0
    assert float(out.loss.detach()) == pytest.approx(float(out.recon))
    assert float(out.bits_per_token) == pytest.approx(float(out.nelbo) / (4 * math.log(2)), rel=1e-5)


def test_free_bits_stop_the_kl_gradient_below_the_floor():
    for free_bits, expect_grad in ((0.0, True), (1e3, False)):
        cfg = tiny("vmd", kind="d1", latent={"components": 1, "free_bits": free_bits})
        model, out = loss_for(cfg)
        out.loss.backward()
        prior_grad = sum(float(p.grad.abs().sum()) for p in model.prior_net.parameters() if p.grad is not None)
        assert (prior_grad > 0) == expect_grad
        assert float(out.latent_kl) > 0  # the reported KL is the true one either way


def test_kl_warmup_is_linear():
    lat = tiny("vmd", latent={"kl_warmup_steps": 100, "beta": 0.5}).latent
    assert [kl_weight(lat, s) for s in (0, 50, 100, 400)] == [0.0, 0.25, 0.5, 0.5]


def test_given_positions_are_never_scored():
    cfg = tiny("mdm", kind="d1")
    model = build_model(cfg, 10, 4)
    x0 = torch.randint(0, 10, (128, 4))
    given = torch.ones_like(x0, dtype=torch.bool)
    out = diffusion_loss(model, x0, LinearSchedule(), cfg.diffusion, cfg.latent, given=given)
    assert float(out.recon) == 0.0


def test_flat_weighting_counts_each_masked_token_once_and_reports_the_same_bound():
    # linear schedule: w(t) = 1/t and E[#masked] = t * L, so the ELBO weighting scores about
    # L * nll per sequence and the flat one E[t] * L * nll, half as much
    _, elbo = loss_for(tiny("mdm", kind="d1"))
    _, flat = loss_for(tiny("mdm", kind="d1", diffusion={"weighting": "flat"}))
    assert float(flat.loss.detach()) / float(elbo.loss.detach()) == pytest.approx(0.5, abs=0.06)
    assert float(flat.nelbo) == pytest.approx(float(elbo.nelbo))
