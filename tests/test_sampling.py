import math

import pytest
import torch

from tests.conftest import tiny
from vmd.model import build_model
from vmd.sampling import choose_values, generate, unmask_counts
from vmd.schedule import LinearSchedule


class FixedLogits(torch.nn.Module):
    """A stand-in denoiser that returns the same logits for every input."""

    has_latent = False

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.mask_id = logits.shape[-1]

    def sample_z(self, x, generator=None):
        return None

    def forward(self, x, z=None):
        return self.logits.expand(x.shape[0], -1, -1)


def record(model, x, **kw):
    steps = []
    out = generate(model, x, callback=steps.append, **kw)
    return out, steps


@pytest.mark.parametrize("nfe", [1, 2, 3, 5, 8, 20])
def test_step_counts_follow_the_schedule_and_reveal_everything(nfe):
    L, V = 16, 5
    model = FixedLogits(torch.randn(L, V))
    x = torch.full((3, L), V)
    out, steps = record(model, x, nfe=nfe, generator=torch.Generator().manual_seed(0))
    assert len(steps) == nfe
    assert (out != V).all()
    counts = [int(s.revealed[0].sum()) for s in steps]
    assert sum(counts) == L
    left = L
    for k, c in enumerate(counts):
        left -= c
        assert left == round(L * (1 - (k + 1) / nfe))  # linear schedule: remaining = round(M0 * t)
    # positions are revealed once and never changed again
    seen = torch.zeros_like(x, dtype=torch.bool)
    for s in steps:
        assert not (s.revealed & seen).any()
        seen |= s.revealed
    assert seen.all()


def test_nfe_one_reveals_all_at_once_and_bad_nfe_is_refused():
    model = FixedLogits(torch.randn(4, 3))
    _, steps = record(model, torch.full((2, 4), 3), nfe=1)
    assert steps[0].revealed.all()
    with pytest.raises(ValueError):
        generate(model, torch.full((2, 4), 3), nfe=0)


def test_unmask_counts_per_row():
    n = unmask_counts(torch.tensor([10, 4, 0]), torch.tensor([10, 8, 0]), 0.5, LinearSchedule())
    assert n.tolist() == [5, 0, 0]


@pytest.mark.parametrize("strategy", ["random", "top-prob", "top-margin"])
def test_given_positions_never_change(strategy):
    cfg = tiny("vmd")
    model = build_model(cfg, 10, 2).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.full((200, 2), 10)
    x[:100, 0] = 7
    x[100:, 1] = 3
    for nfe in (1, 2):
        out = generate(model, x, nfe=nfe, strategy=strategy, z_policy="step", generator=gen)
        assert (out[:100, 0] == 7).all() and (out[100:, 1] == 3).all()
        assert (out < 10).all()


def test_top_margin_and_top_prob_pick_the_most_confident_positions():
    probs = torch.tensor([
        [0.50, 0.49, 0.01],  # high max prob, tiny margin
        [0.34, 0.33, 0.33],  # unsure
        [0.45, 0.10, 0.45],  # tie between two: zero margin
        [0.40, 0.05, 0.55],  # margin 0.15, highest max prob after 0
    ]).log()
    model = FixedLogits(probs)
    x = torch.full((1, 4), 3)
    _, steps = record(model, x, nfe=4, strategy="top-margin", temperature=0)
    order = [int(s.revealed[0].nonzero()) for s in steps]
    assert order[0] == 3  # margin 0.15 beats 0.01, 0.01 and 0.0
    _, steps = record(model, x, nfe=4, strategy="top-prob", temperature=0)
    assert [int(s.revealed[0].nonzero()) for s in steps][0] == 3  # max prob 0.55
    assert [int(s.revealed[0].nonzero()) for s in steps][1] == 0  # then 0.50


def test_order_noise_draws_the_order_by_plackett_luce_on_the_scores():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.4, 0.3, 0.3]]).log()  # top-prob scores 0.8 and 0.4
    model, x = FixedLogits(probs), torch.full((20000, 2), 3)
    gen = torch.Generator().manual_seed(0)
    _, steps = record(model, x, nfe=2, strategy="top-prob", temperature=0, generator=gen)
    assert steps[0].revealed[:, 0].all()  # no noise: the most confident always goes first
    _, steps = record(model, x, nfe=2, strategy="top-prob", temperature=0, generator=gen, order_noise=0.5)
    first = steps[0].revealed[:, 0].double().mean()
    assert abs(first - 0.8 ** 2 / (0.8 ** 2 + 0.4 ** 2)) < 0.015  # weights score ** (1 / noise): 0.8
    assert (steps[-1].x == 0).all()  # the values stay argmax


def test_gumbel_draws_follow_the_softmax_and_argmax_at_zero_temperature():
    logits = torch.tensor([[[0.0, 1.0, 2.0]]]).expand(1, 20000, 3)
    gen = torch.Generator().manual_seed(0)
    v = choose_values(logits, 1.0, gen)
    freq = torch.bincount(v.flatten(), minlength=3).double() / v.numel()
    assert torch.allclose(freq, torch.softmax(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), 0), atol=0.015)
    cold = choose_values(logits, 0.5, gen)
    assert (cold == 2).double().mean() > freq[2] + 0.1  # a lower temperature sharpens
    assert (choose_values(logits, 0, gen) == 2).all()


def test_z_policies_draw_once_or_every_step():
    cfg = tiny("vmd", kind="d1")
    model = build_model(cfg, 10, 4).eval()
    gen = torch.Generator().manual_seed(0)
    for policy, distinct in (("once", 1), ("step", 4)):
        _, steps = record(model, torch.full((2, 4), 10), nfe=4, z_policy=policy, generator=gen)
        zs = {tuple(s.z[0].tolist()) for s in steps}
        assert len(zs) == distinct


def test_posterior_policy_encodes_the_sequence_completed_by_the_last_predictions():
    cfg = tiny("vmd", kind="d1")
    model = build_model(cfg, 10, 4).eval()
    seen, encode = [], model.encode

    def spy(x0, masked):
        seen.append((x0.clone(), masked.clone()))
        return encode(x0, masked)

    model.encode = spy
    logits = []
    forward = model.forward
    model.forward = lambda x, z=None: logits.append(forward(x, z)) or logits[-1]
    x = torch.full((3, 4), 10)
    x[:, 0] = 7  # a given token
    _, steps = record(model, x, nfe=4, z_policy="posterior", generator=torch.Generator().manual_seed(0))
    assert len(seen) == 3  # the first z comes from the prior, then one draw before each later step
    before = [x] + [s.x for s in steps]
    for k, (x0_hat, masked) in enumerate(seen):
        prev = before[k + 1]  # the sequence the step starts from
        assert torch.equal(masked, prev == 10)
        assert (x0_hat != 10).all() and (x0_hat[:, 0] == 7).all()
        assert torch.equal(x0_hat[~masked], prev[~masked])
        assert torch.equal(x0_hat[masked], logits[k].argmax(-1)[masked])
    assert len({tuple(s.z[0].tolist()) for s in steps}) == 4
