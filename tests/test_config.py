import pytest

from vmd import config as C
from vmd.runtime.errors import ConfigError


def test_every_bundled_preset_loads_and_validates():
    names = C.list_presets()
    assert {"synthetic-2tok-mdm", "synthetic-2tok-vmd", "synthetic-d1-vmd", "synthetic-d2-mdm"} <= set(names)
    for name in names:
        cfg = C.load(name)
        parts = name.split("-")
        assert cfg.method in ("mdm", "vmd")
        if cfg.task.name != "text":
            assert cfg.method in parts  # sudoku-vmd-tiny, synthetic-d1-mdm
            continue
        # text: NAME-mdm one block, NAME-ar blocks of 1, NAME-bd3-blockB BD3, NAME-blockB block VMD
        block = next((int(p[5:]) for p in parts if p.startswith("block")), 1 if "ar" in parts else 0)
        assert cfg.model.block_size == block, name
        assert cfg.method == ("vmd" if block > 1 and "bd3" not in parts else "mdm"), name
        # NAME-kK: trained for the sampler of K steps per block, and sampled so by default
        steps = next((int(p[1:]) for p in parts if p[0] == "k" and p[1:].isdigit()), 0)
        assert cfg.diffusion.steps == steps and (not steps or cfg.sample.nfe == steps), name


def test_overrides_are_typed_and_layered():
    cfg = C.load("synthetic-2tok-vmd", overrides=["train.steps=123", "train.lr=2e-3", "latent.beta=1", "sample.strategy=top-margin"])
    assert cfg.train.steps == 123 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == pytest.approx(2e-3) and isinstance(cfg.latent.beta, float)
    assert cfg.sample.strategy == "top-margin"
    assert cfg.method == "vmd"  # untouched keys come from the preset


def test_user_file_sits_between_preset_and_overrides(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("train: {steps: 77, seed: 5}\n")
    cfg = C.load("synthetic-2tok-mdm", f, ["train.seed=9"])
    assert (cfg.train.steps, cfg.train.seed) == (77, 9)


@pytest.mark.parametrize("override, words", [
    ("train.stpes=3", ["'train.stpes'", "did you mean 'steps'"]),
    ("trian.steps=3", ["'trian'", "did you mean 'train'"]),
    ("train.steps=abc", ["train.steps", "expected int"]),
    ("train.steps=2.5", ["train.steps", "expected int"]),
    ("diffusion.schedule=cosh", ["diffusion.schedule", "linear, cosine"]),
    ("sample.nfe=0", ["sample.nfe", ">= 1"]),
    ("task.p=1.5", ["task.p", "[0, 1]"]),
    ("model.heads=3", ["model.dim", "model.heads"]),
    ("train=5", ["train", "mapping"]),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        C.load("synthetic-2tok-mdm", overrides=[override])
    for w in words:
        assert w in str(e.value)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        C.load("synthetic-2tok-vdm")
    assert "did you mean 'synthetic-2tok-vmd'" in str(e.value)
    assert "synthetic-d2-mdm" in str(e.value)


def test_yaml_round_trip():
    cfg = C.load("synthetic-d2-vmd")
    assert C.load_yaml_text(C.to_yaml(cfg)) == cfg


def test_broken_yaml_file_is_a_config_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: {steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load(file=f)


def test_a_yaml_tag_that_would_build_a_python_object_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    f = tmp_path / "evil.yaml"
    f.write_text(f"task: {{name: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path [{str(marker)!r}]]}}\n"
                 "train: !!python/name:os.system\n")
    with pytest.raises(ConfigError, match="not valid YAML.*python/"):
        C.load(file=f)
    assert not marker.exists()
