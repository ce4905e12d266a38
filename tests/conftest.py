import pytest
import torch

from vmd import config as C


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(method="mdm", kind="2tok", steps=40, **sections):
    """A config small enough to train in a second or two."""
    data = {
        "method": method,
        "task": {"name": "synthetic", "kind": kind},
        "model": {"dim": 32, "layers": 1, "heads": 2},
        "latent": {"dim": 4, "encoder_dim": 32, "prior_dim": 32, "prior": "conditional", "components": 4},
        "train": {"steps": steps, "batch_size": 64, "log_every": 10, "checkpoint_every": 10, "warmup_steps": 5},
        "sample": {"num_samples": 2000, "batch_size": 1000},
        "device": {"device": "cpu"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return C.from_dict(data)
