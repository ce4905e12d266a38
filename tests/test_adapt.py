"""train.init_from and train.freeze_denoiser: a VMD started from a trained MDM (method.md §5)."""

from dataclasses import replace

import pytest
import torch

from tests.conftest import tiny
from vmd import checkpoint
from vmd.runtime.errors import CheckpointError, ConfigError
from vmd.model import build_model
from vmd.model.adapt import is_denoiser, start_from
from vmd.tasks import make_task
from vmd.train import Trainer, train

SUDOKU = {"task": {"name": "sudoku"}, "model": {"dim": 32, "layers": 2, "heads": 2, "relation_bias": True}}


def build(cfg):
    task = make_task(cfg.task)
    return build_model(cfg, task.vocab, task.length, task.layout), task


@pytest.mark.parametrize("sections", [{}, SUDOKU, {"latent": {"adaln": "linear"}}],
                         ids=["synthetic", "sudoku", "linear-adaln"])
def test_vmd_started_from_an_mdm_gives_the_mdms_logits_for_every_z(sections):
    mdm, task = build(tiny("mdm", **sections))
    with torch.no_grad():  # LayerNorm weights away from (1, 0), so that folding them into the adaLN is tested
        for name, p in mdm.named_parameters():
            if ".norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    vmd, _ = build(tiny("vmd", **sections))
    start_from(vmd, mdm, "test")
    xt = torch.randint(0, task.vocab + 1, (5, task.length))
    with torch.no_grad():
        want = mdm(xt)
        for _ in range(3):
            z = torch.randn(5, vmd.latent_dim) * 3
            assert torch.allclose(vmd(xt, z), want, atol=1e-5)
        fresh, _ = build(tiny("vmd", **sections))  # without start_from the logits differ, so the check can fail
        assert not torch.allclose(fresh(xt, z), want, atol=1e-3)


def test_frozen_denoiser_keeps_the_mdms_weights_and_trains_the_latent_path(tmp_path):
    train(tiny("mdm", steps=20), tmp_path / "mdm")
    mdm, _, _ = checkpoint.load_model(tmp_path / "mdm")
    cfg = tiny("vmd", steps=20, train={"init_from": str(tmp_path / "mdm"), "freeze_denoiser": True, "ema": 0.0})
    trainer = train(cfg, tmp_path / "vmd")
    before = build(tiny("vmd"))[0].state_dict()
    source = mdm.state_dict()
    changed = set()
    for name, value in trainer.model.state_dict().items():
        if is_denoiser(name):
            if name in source:
                assert torch.equal(value, source[name]), name
        elif not torch.equal(value, before[name]):
            changed.add(name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("trunk.") else ""))
    assert {"encoder", "prior_net", "trunk.cond"} <= changed


def test_resume_of_a_frozen_run_continues(tmp_path):
    train(tiny("mdm", steps=10), tmp_path / "mdm")
    cfg = tiny("vmd", steps=10, train={"init_from": str(tmp_path / "mdm"), "freeze_denoiser": True})
    train(cfg, tmp_path / "vmd")
    (tmp_path / "mdm" / "model.safetensors").unlink()  # resuming must not need the source again
    trainer = Trainer.resume(tmp_path / "vmd", lambda c: replace(c, train=replace(c.train, steps=15)))
    trainer.run()
    assert trainer.step == 15


def test_bad_starting_points_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="train.init_from: .*missing does not exist: give a run directory"):
        Trainer.create(tiny("vmd", train={"init_from": str(tmp_path / "missing")}), tmp_path / "a")
    train(tiny("mdm", steps=5), tmp_path / "mdm")
    wider = tiny("vmd", model={"dim": 64}, train={"init_from": str(tmp_path / "mdm")})
    with pytest.raises(CheckpointError, match=r"trunk\.pos is \(2, 32\) there and \(2, 64\) here"):
        Trainer.create(wider, tmp_path / "b")
    train(tiny("vmd", steps=5), tmp_path / "vmd")
    with pytest.raises(CheckpointError, match="a VMD cannot start an MDM"):
        Trainer.create(tiny("mdm", train={"init_from": str(tmp_path / "vmd")}), tmp_path / "c")
    with pytest.raises(ConfigError, match="freeze_denoiser"):
        tiny("vmd", train={"freeze_denoiser": True})


def test_a_mixture_started_from_an_mdm_has_its_trunk_and_heads_spread_around_its_head():
    """Each of the K heads starts as the MDM's head plus a little noise (equal heads would get equal
    gradients and stay equal), so that the mixture's marginal starts close to the MDM's."""
    mixture = {**SUDOKU, "latent": {"kind": "mixture", "components": 4, "prior": "normal"}, "diffusion": {"steps": 10}}
    mdm, task = build(tiny("mdm", **SUDOKU))
    mix, _ = build(tiny("vmd", **mixture))
    start_from(mix, mdm, "test")
    heads = mix.head.heads.weight.detach().view(4, task.vocab, -1)
    src = mdm.state_dict()
    shared = [name for name in mix.state_dict() if name in src]
    assert len(shared) > 10 and all(torch.equal(mix.state_dict()[n], src[n]) for n in shared)
    assert not torch.equal(heads[0], heads[1])  # spread apart
    spread = float((heads - mdm.head.weight.detach()).std() / mdm.head.weight.detach().std())
    assert 0.05 < spread < 0.2, spread
    xt = torch.randint(0, task.vocab + 1, (5, task.length))
    with torch.no_grad():
        gap = (mix(xt).marginal().exp() - torch.softmax(mdm(xt), -1)).abs().max()
    assert gap < 0.05
    with pytest.raises(CheckpointError, match="a mixture cannot start an MDM"):
        start_from(build(tiny("mdm", **SUDOKU))[0], mix, "test")
