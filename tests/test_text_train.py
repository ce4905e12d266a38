"""Text through the whole tool: train a block diffusion model and a block VMD on a small corpus,
evaluate bits per character without the corpus, resume; bad input is one line."""

import json
import subprocess
import sys

import pytest

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40
TINY = ["--set", "task.length=32", "--set", "model.dim=32", "--set", "model.layers=1", "--set", "model.heads=2",
        "--set", "latent.encoder_dim=32", "--set", "train.batch_size=8", "--set", "train.log_every=5",
        "--set", "train.eval_every=10", "--set", "train.eval_sequences=4", "--set", "device.device=cpu"]


def vmd(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "vmd_cli", *map(str, args)], capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("preset", ["shakespeare-bd3-block4", "shakespeare-block4"])
def test_train_then_evaluate_bits_per_character_and_load_without_the_corpus(tmp_path, preset):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    run = tmp_path / "run"
    r = vmd("train", "--preset", preset, "--set", f"task.file={corpus}", "--set", "train.steps=20", *TINY, "--out", run)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "valid_bpt" in row] == [10, 20]
    r = vmd("eval", run, "--max-sequences", "3", "--draws", "2", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["split"] == "test" and m["sequences"] == 3 and m["tokens"] == 96 and m["draws"] == 2
    assert 0 < m["bpc"] < 10 and m["bpc_stderr"] > 0
    if preset == "shakespeare-block4":
        assert {"latent_kl", "active_dims", "z_gain"} <= set(m)
    again = json.loads(vmd("eval", run, "--max-sequences", "3", "--draws", "2", "--json").stdout)
    assert again["bpc"] == m["bpc"]  # a fixed seed
    corpus.unlink()  # the vocabulary travels with the run: it loads and decodes without the corpus
    from vmd.checkpoint import load_run

    model, cfg, _, task = load_run(run)
    assert task.format(task.start(1)[0]) == ["_" * 32] and task.vocab == len(set(CORPUS))


def test_resume_and_bad_text_input(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    run = tmp_path / "run"
    base = ["train", "--preset", "shakespeare-bd3-block4", "--set", f"task.file={corpus}", *TINY]
    assert vmd(*base, "--set", "train.steps=10", "--out", run).returncode == 0
    r = vmd("train", "--resume", run, "--set", "train.steps=15")
    assert r.returncode == 0, r.stderr
    for args, words in [
        (base + ["--set", "model.block_size=5", "--out", tmp_path / "b"], "must divide task.length (32)"),
        (base + ["--set", f"task.file={tmp_path / 'missing.txt'}", "--out", tmp_path / "c"], "missing.txt"),
        (["sample", run, "--prompt", "Zebra"], "outside this run's vocabulary"),
        (["eval", run, "--split", "train"], "--split must be valid or test"),
    ]:
        r = vmd(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "Traceback" not in r.stderr and words in lines[-1], r.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # a failed start leaves nothing
    r = vmd("train", "--resume", tmp_path)  # not a run: one line, and no lock file left in it
    assert r.returncode == 2 and not (tmp_path / ".lock").exists(), r.stderr


def test_eval_reads_a_moved_corpus_from_data_and_the_hint_names_that_option(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    run = tmp_path / "run"
    r = vmd("train", "--preset", "shakespeare-bd3-block4", "--set", f"task.file={corpus}", "--set", "train.steps=2",
            *TINY, "--out", run)
    assert r.returncode == 0, r.stderr
    moved = tmp_path / "elsewhere.txt"
    corpus.rename(moved)
    r = vmd("eval", run, "--max-sequences", "2", "--draws", "1")
    assert r.returncode == 2 and "not found" in r.stderr and "vmd eval --data PATH" in r.stderr, r.stderr
    r = vmd("eval", run, "--data", moved, "--max-sequences", "2", "--draws", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sequences"] == 2


def test_meta_json_lists_the_task_s_own_keys_only(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    run = tmp_path / "run"
    r = vmd("train", "--preset", "shakespeare-bd3-block4", "--set", f"task.file={corpus}", "--set", "train.steps=2",
            *TINY, "--out", run)
    assert r.returncode == 0, r.stderr
    assert "BD3 block 4 on text" in r.stderr  # named as papers name it
    task = json.loads((run / "meta.json").read_text())["task"]
    assert set(task) == {"name", "file", "length", "tokenizer", "vocab_size"}  # no Sudoku or synthetic keys
    assert vmd("eval", run, "--max-sequences", "2", "--draws", "1").returncode == 0  # and the run still loads


@pytest.mark.parametrize("tokenizer", ["char", "sentencepiece"])
def test_a_folder_of_real_documents_trains_evaluates_and_samples_unedited(tmp_path, tokenizer):
    """The system's license texts (Debian's /usr/share/common-licenses: '_', '*' and '=' occur only in
    their last 10%, which once refused them), else this project's docs; nothing edited or downloaded."""
    import shutil
    from pathlib import Path

    licenses = Path("/usr/share/common-licenses")
    source = licenses if licenses.is_dir() else Path(__file__).resolve().parents[1] / "docs"
    docs = tmp_path / "docs"
    docs.mkdir()
    for f in sorted(p for p in source.iterdir() if p.is_file()):
        shutil.copy(f, docs / f.name)
    run = tmp_path / "run"
    pieces = ["--set", "task.tokenizer=sentencepiece", "--set", "task.vocab_size=300"] if tokenizer != "char" else []
    r = vmd("train", "--preset", "shakespeare-bd3-block4", "--set", f"task.file={docs}", "--set", "train.steps=2",
            *pieces, *TINY, "--out", run)
    assert r.returncode == 0, r.stderr
    e = vmd("eval", run, "--max-sequences", "2", "--draws", "1", "--json")
    assert e.returncode == 0 and json.loads(e.stdout)["sequences"] == 2, e.stderr
    s = vmd("sample", run, "-n", "2", "--format", "json")
    assert s.returncode == 0 and len(s.stdout.splitlines()) == 2, s.stderr
