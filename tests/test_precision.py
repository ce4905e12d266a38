"""Mixed precision that is checked: bf16 on the CPU tracks fp32, fp16's scaler skips an overflow
instead of writing NaN weights, and fp16 where it has no scaler is refused."""

import pytest
import torch

from tests.conftest import tiny
from tests.test_cli import assert_one_line, cli
from vmd import checkpoint
from vmd.runtime.errors import ConfigError
from vmd.train import Trainer, train


def test_bf16_trains_and_saves_fp32_weights(tmp_path):
    trainer = train(tiny("vmd", steps=20, device={"precision": "bf16"}), tmp_path / "r")
    assert not trainer.scaler.is_enabled()  # bf16 has fp32's range: no loss scaling
    assert torch.isfinite(torch.tensor(trainer.last_metrics["loss"]))
    model, saved, _ = checkpoint.load_model(tmp_path / "r")
    assert saved.device.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("method", ["mdm", "vmd"])
def test_a_few_bf16_steps_track_fp32(tmp_path, method):
    """Same seed, same draws: the bf16 run's losses and weights stay within bf16's rounding of fp32's."""
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny(method, steps=30, device={"precision": precision}, train={"ema": 0.0})
        trainer = Trainer(cfg, tmp_path / precision)
        losses = [float(trainer.train_step()[0]) for _ in range(30)]
        runs[precision] = (torch.tensor(losses), torch.nn.utils.parameters_to_vector(trainer.model.parameters()))
    (l32, w32), (l16, w16) = runs["fp32"], runs["bf16"]
    assert l16[0] != l32[0]  # autocast did run in bf16
    assert torch.allclose(l16, l32, rtol=0.03, atol=0.02), (l16 - l32).abs().max()
    assert (w16 - w32).norm() / w32.norm() < 0.01


def test_an_fp16_overflow_is_skipped_by_the_scaler_not_written_into_the_weights(tmp_path):
    """A loss scale so large that the scaled gradients overflow: the step is skipped, the scale
    backs off, the weights stay finite and unchanged; the next steps train."""
    trainer = Trainer(tiny("vmd", steps=10), tmp_path / "r")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000)  # fp16's scaler, on CPU
    before = torch.nn.utils.parameters_to_vector(trainer.model.parameters()).clone()
    trainer.train_step()
    after = torch.nn.utils.parameters_to_vector(trainer.model.parameters())
    assert torch.equal(after, before)
    assert trainer.scaler.get_scale() == 2.0**126
    for _ in range(140):  # backs off by halves until the gradients fit, then steps
        trainer.train_step()
    final = torch.nn.utils.parameters_to_vector(trainer.model.parameters())
    assert torch.isfinite(final).all() and not torch.equal(final, before)


def test_fp16_on_a_cpu_is_refused_in_one_line_and_leaves_nothing(tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        Trainer.create(tiny(device={"precision": "fp16"}), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    r = cli("train", "--preset", "synthetic-2tok-mdm", "--set", "device.device=cpu", "--set", "device.precision=fp16",
            "--out", str(tmp_path / "c"))
    assert "fp16 needs a CUDA GPU" in assert_one_line(r)
    assert not (tmp_path / "c").exists()
