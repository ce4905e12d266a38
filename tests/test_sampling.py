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
    assert len(steps) == min(nfe, L)  # the callback sees the steps that reveal something: above L, one each
    assert (out != V).all()
    counts = {s.index: int(s.revealed[0].sum()) for s in steps}
    assert sum(counts.values()) == L and min(counts.values()) > 0
    left = L
    for k in range(1, nfe + 1):
        left -= counts.get(k, 0)
        assert left == round(L * (1 - k / nfe))  # linear schedule: remaining = round(M0 * t)
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
    assert len(steps) == 3  # three masked positions: one of the four steps reveals nothing and is skipped
    assert len(seen) == 2  # the first z comes from the prior, then one draw before each later step
    before = [x] + [s.x for s in steps]
    for k, (x0_hat, masked) in enumerate(seen):
        prev = before[k + 1]  # the sequence the step starts from
        assert torch.equal(masked, prev == 10)
        assert (x0_hat != 10).all() and (x0_hat[:, 0] == 7).all()
        assert torch.equal(x0_hat[~masked], prev[~masked])
        assert torch.equal(x0_hat[masked], logits[k].argmax(-1)[masked])
    assert len({tuple(s.z[0].tolist()) for s in steps}) == 3


def test_steps_with_nothing_to_reveal_cost_no_denoiser_call():
    """--nfe 100000 on two tokens: the steps between the two reveals (and after) call nothing."""
    import time

    cfg = tiny("vmd")
    model = build_model(cfg, 10, 2).eval()
    calls, forward = [], model.forward

    def counted(x, z=None):
        calls.append(x.shape)
        if len(calls) > 2:
            raise AssertionError("a denoiser call with nothing left to reveal")
        return forward(x, z)

    model.forward = counted
    t0 = time.perf_counter()
    for policy in ("once", "step", "posterior"):
        calls.clear()
        out, steps = record(model, torch.full((3, 2), 10), nfe=100_000, z_policy=policy, temperature=1.0,
                            generator=torch.Generator().manual_seed(0))
        assert (out < 10).all() and len(calls) == 2  # one call per revealed position: the length
        assert [s.index for s in steps] == [25_001, 75_000]  # round(2 t) falls past t = 0.75 (1.5 -> 2) and at 0.25
    assert time.perf_counter() - t0 < 1.0


def test_a_step_that_reveals_nothing_changes_no_draw_of_the_steps_that_do():
    """Three rows of 16 positions, 16 steps: every step reveals one each; with 32 steps, half of them reveal
    nothing. Skipped, they draw nothing: the other 16 see the same draws, and the same result comes out."""
    model = FixedLogits(torch.randn(16, 5))
    for strategy in ("random", "top-margin"):
        kw = dict(strategy=strategy, temperature=1.0, order_noise=0.5)
        a = generate(model, torch.full((3, 16), 5), nfe=16, generator=torch.Generator().manual_seed(3), **kw)
        b = generate(model, torch.full((3, 16), 5), nfe=32, generator=torch.Generator().manual_seed(3), **kw)
        assert torch.equal(a, b)


def test_row_generators_give_each_row_its_own_stream():
    """A row's draws come from its own generator: the same whatever rows stand beside it, and rows
    left out of a draw keep their stream where it was."""
    from vmd.model.latent import Mixture, StandardNormal, reparameterize
    from vmd.sampling import RowGenerators, gumbel_noise, multinomial, scores

    def gens(*seeds):
        return RowGenerators(torch.Generator().manual_seed(s) for s in seeds)

    probs = torch.softmax(torch.randn(3, 2, 5), -1)
    logits, means = torch.randn(3, 4, 5), torch.randn(3, 2, 5, 3)
    draws = (lambda g, rows: gumbel_noise(logits[rows], g), lambda g, rows: scores(logits[rows], "random", g),
             lambda g, rows: multinomial(probs[rows], g), lambda g, rows: StandardNormal(len(rows), 4, "cpu").sample(g),
             lambda g, rows: Mixture(logits[rows, :2], means[rows], torch.zeros(3, 2, 5, 3)[rows]).sample(g),
             lambda g, rows: reparameterize(torch.zeros(len(rows), 6), torch.zeros(len(rows), 6), g))
    for draw in draws:
        three = draw(gens(1, 2, 3), [0, 1, 2])
        alone = draw(gens(2), [1])
        assert torch.equal(three[1], alone[0]) and not torch.equal(three[0], three[1])
        g = gens(1, 2, 3)
        some = draw(g.only(torch.tensor([True, False, True])), [0, 1, 2])
        assert torch.equal(some[2], three[2])
        assert torch.equal(draw(g.subset(torch.tensor([1])), [1])[0], alone[0])  # row 1 had not moved


def test_plain_generators_draw_as_torch_does():
    """Training, eval and sample keep their draws: the helpers on a torch.Generator are torch's own calls."""
    from vmd.model.latent import StandardNormal
    from vmd.sampling import gumbel_noise, multinomial

    like = torch.zeros(4, 3, 5, dtype=torch.float64)
    u = torch.rand(like.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(gumbel_noise(like, torch.Generator().manual_seed(0)), -torch.log(-torch.log(u)))
    probs = torch.softmax(torch.randn(4, 2, 6), -1)
    assert torch.equal(multinomial(probs, torch.Generator().manual_seed(1)),
                       torch.multinomial(probs.reshape(8, 6), 1, generator=torch.Generator().manual_seed(1)).view(4, 2))
    assert torch.equal(StandardNormal(4, 3, "cpu").sample(torch.Generator().manual_seed(2)),
                       torch.randn(4, 3, generator=torch.Generator().manual_seed(2)))
