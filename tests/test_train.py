import dataclasses
import json
import os

import pytest
import torch

from tests.conftest import tiny
from vmd import checkpoint
from vmd.runtime import atomic
from vmd.runtime.errors import CheckpointError
from vmd.train import Trainer, TrainingInterrupted, train


def weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "train_state.safetensors"))


def test_run_directory_holds_weights_config_and_metadata(tmp_path):
    cfg = tiny("vmd", steps=20)
    train(cfg, tmp_path / "r")
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert files == {"config.yaml", "meta.json", "model.safetensors", "train_state.safetensors", "metrics.jsonl", ".lock"}
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["step"] == 20 and meta["method"] == "vmd" and "torch" in meta["versions"]
    assert set(meta["train_metrics"]) >= {"recon", "latent_kl", "bits_per_token"}
    model, saved, step = checkpoint.load_model(tmp_path / "r")
    assert saved == cfg and step == 20


def test_loaded_model_matches_the_ema_weights(tmp_path):
    cfg = tiny("mdm", steps=20)
    trainer = train(cfg, tmp_path / "r")
    model, _, _ = checkpoint.load_model(tmp_path / "r")
    for k, v in model.state_dict().items():
        assert torch.allclose(v, trainer.ema[k])
    x = torch.full((3, 2), 10)
    trainer.model.load_state_dict(trainer.ema)
    assert torch.allclose(model(x), trainer.model.eval()(x))


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    cfg = tiny("vmd", steps=30)
    train(cfg, tmp_path / "straight")

    def stop_at_10(progress):
        if progress.step == 10:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as e:
        train(cfg, tmp_path / "split", callback=stop_at_10)
    assert e.value.step == 10
    assert json.loads((tmp_path / "split" / "meta.json").read_text())["step"] == 10
    resumed = Trainer.resume(tmp_path / "split")
    assert resumed.step == 10
    resumed.run()
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_an_existing_run_is_never_overwritten(tmp_path):
    cfg = tiny(steps=10)
    train(cfg, tmp_path / "r")
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    cfg = tiny(steps=10)
    train(cfg, tmp_path / "r")
    before = (tmp_path / "r" / "train_state.safetensors").read_bytes()

    def crash(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic.atomic_write(tmp_path / "r" / "train_state.safetensors", b"new and half written")
    assert (tmp_path / "r" / "train_state.safetensors").read_bytes() == before


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 100), "corrupt"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]), "corrupt"),
    (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
])
def test_damaged_runs_give_a_clear_error(tmp_path, damage, message):
    train(tiny(steps=10), tmp_path / "r")
    damage(tmp_path / "r")
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_model(tmp_path / "r")


def edit_model_file(run_dir, key, change):
    """Rewrite one tensor of a run's model.safetensors, keeping its header."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = run_dir / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors[key] = change(tensors[key])
    save_file(tensors, str(path), metadata=meta)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    train(tiny(steps=10), tmp_path / "r")
    edit_model_file(tmp_path / "r", "head.weight", lambda w: torch.zeros(3, 3))
    with pytest.raises(CheckpointError, match="do not match"):
        checkpoint.load_model(tmp_path / "r")


def test_a_model_exported_with_fp16_weights_is_half_the_size_and_loads_as_fp32(tmp_path):
    train(tiny("vmd", steps=20, model={"dim": 64}), tmp_path / "r")
    checkpoint.export_model(tmp_path / "r", tmp_path / "half.safetensors", half=True)
    full_size = (tmp_path / "r" / "model.safetensors").stat().st_size
    assert (tmp_path / "half.safetensors").stat().st_size < 0.6 * full_size
    full, cfg, step = checkpoint.load_model(tmp_path / "r")
    half, cfg_half, step_half = checkpoint.load_model(tmp_path / "half.safetensors")
    assert (cfg_half, step_half) == (cfg, step)
    assert all(p.dtype == torch.float32 for p in half.parameters())
    x = torch.full((4, 2), full.mask_id)
    z = torch.randn(4, full.latent_dim)
    with torch.no_grad():
        a, b = full(x, z), half(x, z)
    assert not torch.equal(a, b)  # rounded,
    assert torch.allclose(a, b, atol=1e-2)  # but only rounded
    checkpoint.export_model(tmp_path / "r", tmp_path / "same.safetensors")
    with torch.no_grad():
        assert torch.equal(checkpoint.load_model(tmp_path / "same.safetensors")[0](x, z), a)


def test_weights_beyond_fp16_range_are_not_exported_in_half(tmp_path):
    train(tiny(steps=5), tmp_path / "r")
    edit_model_file(tmp_path / "r", "head.bias", lambda b: b + 1e5)
    with pytest.raises(CheckpointError, match="head.bias holds values beyond fp16"):
        checkpoint.export_model(tmp_path / "r", tmp_path / "half.safetensors", half=True)
    assert not (tmp_path / "half.safetensors").exists()


def test_loss_terms_are_logged_separately_and_kl_warms_up(tmp_path):
    events = []
    cfg = tiny("vmd", steps=40, latent={"kl_warmup_steps": 40})
    train(cfg, tmp_path / "r", callback=events.append)
    assert [e.step for e in events] == [10, 20, 30, 40]
    assert [round(e.beta, 2) for e in events] == [0.25, 0.5, 0.75, 1.0]
    for e in events:
        assert e.metrics["latent_kl"] >= 0 and e.metrics["recon"] > 0
        assert e.metrics["nelbo"] >= e.metrics["recon"]


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_checkpoint(tmp_path):
    from vmd.runtime.errors import TrainingDiverged

    train(tiny(steps=20), tmp_path / "r")
    before = (tmp_path / "r" / "model.safetensors").read_bytes()

    def explode(cfg):
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=40, lr=1e30, grad_clip=0.0))

    with pytest.raises(TrainingDiverged, match="the checkpoint of step 20 .* is kept"):
        Trainer.resume(tmp_path / "r", explode).run()
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before
    assert checkpoint.load_model(tmp_path / "r")[2] == 20


def test_ctrl_c_after_the_loss_diverged_does_not_save_the_broken_weights(tmp_path, monkeypatch):
    """The loss is checked where the loop logs or saves, not every step; Ctrl-C between two checks
    must not checkpoint weights that went non-finite in between."""
    from vmd.runtime.errors import TrainingDiverged

    train(tiny(steps=20), tmp_path / "r")
    before = (tmp_path / "r" / "model.safetensors").read_bytes()

    def explode(cfg):  # no log or checkpoint before step 1000, where the run is interrupted at 35
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=1000, lr=1e30, grad_clip=0.0,
                                                                  log_every=1000, checkpoint_every=1000))

    step = Trainer.train_step

    def interrupted(self):
        if self.step == 35:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(TrainingDiverged, match="between steps 20 and 35"):
        Trainer.resume(tmp_path / "r", explode).run()
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before
