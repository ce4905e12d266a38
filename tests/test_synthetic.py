import math

import pytest
import torch

from vmd.config import TaskConfig
from vmd.tasks.synthetic import SyntheticTask, joint


@pytest.mark.parametrize("kind, support", [("2tok", 10), ("2tok-nonuniform", 10), ("d1", 10), ("d2", 100), ("corr", 100)])
def test_joints_are_distributions_with_the_stated_support(kind, support):
    p = joint(kind, 10, p=0.5)
    assert float(p.sum()) == pytest.approx(1.0)
    assert int((p > 0).sum()) == support


def test_nonuniform_weights_and_corr_marginal():
    p = joint("2tok-nonuniform", 10)
    assert float(p[4, 5]) == pytest.approx(5 / 55)
    c = joint("corr", 10, p=0.3)
    assert float(c[2, 3]) == pytest.approx(0.1 * (0.3 + 0.07))
    assert float(c[2, 7]) == pytest.approx(0.1 * 0.07)


def test_training_batches_follow_the_joint():
    task = SyntheticTask(TaskConfig(kind="d2"))
    x0, given = task.train_batch(20000, torch.Generator().manual_seed(0))
    assert given is None and x0.shape == (20000, 4)
    assert ((x0[:, 1] - x0[:, 0]) % 10 == 1).all() and ((x0[:, 3] - x0[:, 2]) % 10 == 1).all()
    assert task.metrics(x0)["kl"] < 0.01  # 100 outcomes, 20000 draws: only estimation noise


def test_metrics_of_independent_samples_match_the_closed_form():
    task = SyntheticTask(TaskConfig(kind="2tok"))
    x = torch.randint(0, 10, (100000, 2), generator=torch.Generator().manual_seed(0))
    m = task.metrics(x)
    assert m["accuracy"] == pytest.approx(0.1, abs=0.005)
    assert m["kl"] == pytest.approx(math.log(10), abs=0.02)  # KL(p || p1 x p2) = log 10


def test_a_missing_support_point_costs_a_large_but_finite_kl():
    task = SyntheticTask(TaskConfig(kind="2tok"))
    x = torch.tensor([[k, (k + 1) % 10] for k in range(9)] * 100)  # k = 9 never drawn
    m = task.metrics(x)
    assert m["accuracy"] == 1.0
    # 0.1 * log(0.1 / (0.01 / 901)) for the missing point, less 0.9 * log(1 / 0.9) for the others
    assert m["kl"] == pytest.approx(0.1 * math.log(0.1 * 901 / 0.01) - 0.9 * math.log(1 / 0.9), rel=0.01)
