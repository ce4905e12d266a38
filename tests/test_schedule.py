import math

import pytest
import torch

from vmd.diffusion import mask_tokens
from vmd.schedule import CosineSchedule, LinearSchedule, make_schedule, sample_t


def test_linear_weight_is_one_over_t():
    t = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(LinearSchedule().weight(t), 1 / t)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_weight_matches_numerical_derivative(name):
    s = make_schedule(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    numeric = -(s.alpha(t + h) - s.alpha(t - h)) / (2 * h) / (1 - s.alpha(t))
    assert torch.allclose(s.weight(t), numeric, rtol=1e-5)
    assert float(s.alpha(torch.tensor(0.0))) == pytest.approx(1.0)
    assert float(s.alpha(torch.tensor(1.0))) == pytest.approx(0.0, abs=1e-7)


def test_cosine_masks_more_slowly_at_first():
    t = torch.tensor([0.2])
    assert CosineSchedule().mask_prob(t) < LinearSchedule().mask_prob(t)


def test_antithetic_times_fill_every_stratum():
    n = 64
    t = sample_t(n, antithetic=True, t_min=0.0, generator=torch.Generator().manual_seed(3))
    strata = torch.floor(t * n).long().sort().values
    assert torch.equal(strata, torch.arange(n))


def test_masking_rate_follows_the_schedule_and_spares_given_positions():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 10, (4000, 20), generator=gen)
    given = torch.zeros_like(x0, dtype=torch.bool)
    given[:, :5] = True
    for t in (0.2, 0.7):
        xt, masked = mask_tokens(x0, torch.full((4000,), t), LinearSchedule(), 10, given, gen)
        assert not masked[:, :5].any()
        assert (xt[:, :5] == x0[:, :5]).all()
        assert float(masked[:, 5:].float().mean()) == pytest.approx(t, abs=0.01)
        assert ((xt == 10) == masked).all()
