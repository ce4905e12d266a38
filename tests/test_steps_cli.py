"""The k-step bound and the few-step latents through the CLI: a text run trained for one step per
block scores both bounds, samples, and names what it is; bad settings are one line with exit 2."""

import json

import pytest

from test_text_train import CORPUS, TINY, vmd

MIXTURE = ["--set", "latent.kind=mixture", "--set", "latent.components=4", "--set", "latent.kl_warmup_steps=0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("fewstep") / "corpus.txt"
    path.write_text(CORPUS)
    return path


@pytest.fixture(scope="module")
def run(corpus):
    out = corpus.parent / "mixture-k1"
    r = vmd("train", "--preset", "shakespeare-block4", "--set", f"task.file={corpus}", "--set", "train.steps=10",
            "--set", "diffusion.steps=1", *MIXTURE, *TINY, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_eval_gives_the_k_step_bound_beside_the_continuous_one(run):
    r = vmd("eval", run, "--bound-steps", "1", "--max-sequences", "4", "--draws", "2", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["bound_steps"] == 1 and m["trained_steps"] == 1
    assert 0 < m["bpc"] < 10 and 0 < m["bpc_continuous"] < 10 and m["bpc"] != m["bpc_continuous"]
    assert m["bpc_stderr"] > 0 and m["bpc_continuous_stderr"] > 0
    assert m["classes"] == 4 and 1 <= m["classes_used"] <= 4 and abs(m["class_gain_bits"]) < 5
    plain = json.loads(vmd("eval", run, "--max-sequences", "4", "--draws", "2", "--json").stdout)
    assert plain["bpc"] == pytest.approx(m["bpc_continuous"]) and "bound_steps" not in plain
    table = vmd("eval", run, "--max-sequences", "4", "--draws", "2")
    words = " ".join(table.stdout.split())
    assert "(4-class mixture)" in words and "with --bound-steps 1" in table.stderr  # what it was trained for


def test_a_mixture_run_samples_and_redraws(run):
    r = vmd("sample", run, "-n", "4", "-k", "1", "--format", "json", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    texts = [json.loads(line)["text"] for line in r.stdout.splitlines()]
    assert len(texts) == 4 and len(set(texts)) > 1  # argmax characters: only the classes drawn make them differ
    z = vmd("sample", run, "-n", "1", "--z-policy", "step")
    assert z.returncode == 2 and "draws its class at every step" in z.stderr


def test_z_policy_is_refused_for_a_model_without_a_latent():
    r = vmd("sample", "shakespeare-bd3-block4", "-n", "1", "--length", "16", "-k", "2", "--z-policy", "posterior")
    assert r.returncode == 2 and "BD3 block 4 has no latent z" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("sets,words", [
    (["diffusion.steps=3"], "diffusion.steps (3) must divide model.block_size (4)"),
    (["diffusion.steps=1", "diffusion.clip=[0.3,0.8]"], "leave diffusion.clip [0, 1]"),
    (["diffusion.steps=1", "diffusion.weighting=flat"], "leave diffusion.weighting elbo"),
    (["latent.prior=prefix", "model.block_size=0"], "needs block diffusion"),
    (["latent.prior=prefix", "latent.encoder_sees_mask=true"], "latent.encoder_sees_mask false"),
    (["latent.kind=mixture", "latent.components=1"], "latent.components >= 2"),
    (["latent.prior=prefix", "model.block_size=32"], "needs block diffusion"),
    (["method=mdm", "latent.kind=mixture"], "set method vmd"),
    (["diffusion.steps=5"], "must divide model.block_size (4)"),
    (["diffusion.steps=-1"], "diffusion.steps"),
])
def test_bad_few_step_settings_are_one_line(corpus, tmp_path, sets, words):
    args = [a for s in sets for a in ("--set", s)]
    r = vmd("train", "--preset", "shakespeare-block4", "--set", f"task.file={corpus}", *args, *TINY,
            "--out", tmp_path / "bad")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and words in lines[-1], r.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("args,words", [
    (["--bound-steps", "3"], "must divide the block size (4)"),
    (["--bound-steps", "0"], "between 1 and the block size (4)"),
    (["--bound-steps", "1", "--samples", "4"], "give one or the other"),
    (["--temperature", "0.5"], "--temperature set how samples are drawn"),
])
def test_bad_bound_steps_are_one_line(run, args, words):
    r = vmd("eval", run, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr.strip().splitlines()[-1], r.stderr


def test_bound_steps_do_not_apply_to_sudoku():
    r = vmd("eval", "sudoku-mdm", "--bound-steps", "1")
    assert r.returncode == 2 and "--bound-steps does not apply" in r.stderr, r.stderr
