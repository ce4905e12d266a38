"""``vmd sample`` on a text run: prompts kept, the cache and --no-cache agree, JSON lines carry the
settings, a single sample streams to a pipe, and bad input is one line with exit 2."""

import json

import pytest

from test_text_train import CORPUS, TINY, vmd


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("textrun")
    corpus = tmp / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp / "run"
    r = vmd("train", "--preset", "shakespeare-block4", "--set", f"task.file={corpus}", "--set", "train.steps=10",
            *TINY, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_json_samples_keep_the_prompt_and_the_cache_changes_nothing(run):
    args = ["sample", run, "-n", "3", "--length", "70", "-k", "2", "--prompt", "First", "--format", "json"]
    r = vmd(*args)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert row["text"].startswith("First") and len(row["text"]) == 70  # past the 32 trained: the cache slides
        assert row["steps_per_block"] == 2 and row["block_size"] == 4 and row["prompt"] == "First" and row["cache"]
    assert len({row["text"] for row in rows}) == 3
    again = [json.loads(line) for line in vmd(*args, "--no-cache", "--batch-size", "2").stdout.splitlines()]
    assert [row["text"] for row in again] == [row["text"] for row in rows] and not again[0]["cache"]
    plain = vmd("sample", run, "--length", "70", "-k", "2", "--prompt", "First")  # one sample, piped: the text
    assert plain.returncode == 0 and plain.stdout == rows[0]["text"] + "\n"


@pytest.mark.parametrize("args,words", [
    (["--prompt", "First\u00e9\u20ac"], "outside this run's vocabulary"),
    (["--prompt", "First", "--length", "3"], "more than --length 3"),
    (["-k", "0"], "between 1 and the model's block size, 4"),
    (["-k", "5"], "between 1 and the model's block size, 4"),
    (["--nfe", "3"], "--steps-per-block"),
    (["--format", "xml"], "--format must be text or json"),
    (["--prompt-file", "/nonexistent/p.txt"], "/nonexistent/p.txt"),
])
def test_bad_sampling_input_is_one_line(run, args, words):
    r = vmd("sample", run, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr.strip().splitlines()[-1], r.stderr
    if "vocabulary" in words:
        assert "'\u00e9' (U+00E9)" in r.stderr and "U+20AC" in r.stderr


def test_text_options_on_a_model_that_is_not_text():
    r = vmd("sample", "sudoku-mdm", "--prompt", "x", "--length", "9")
    assert r.returncode == 2 and "--length, --prompt apply to text models" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def judge(run):
    out = run.parent / "judge"
    r = vmd("train", "--preset", "shakespeare-ar", "--set", f"task.file={run.parent / 'corpus.txt'}",
            "--set", "train.steps=10", *TINY, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_eval_scores_samples_at_each_steps_per_block_under_a_named_judge(run, judge):
    r = vmd("eval", run, "--samples", "6", "-k", "1,4", "--judge", judge, "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["judge"] == str(judge) and m["samples"] == 6 and m["block_size"] == 4
    data, *rows = m["rows"]
    assert data["steps_per_block"] == "test data" and [row["steps_per_block"] for row in rows] == [1, 4]
    for row in m["rows"]:
        assert row["gen_ppl"] > 1 and 0 <= row["word_validity"] <= 1 and row["unigram_entropy_bits"] > 0
    assert data["word_validity"] > 0.9  # the corpus's own words


@pytest.mark.parametrize("args,words", [
    (["--nfe", "3"], "--nfe does not apply to text models"),
    (["--samples", "4", "--judge", "sudoku-mdm"], "another vocabulary"),
    (["--samples", "4", "-k", "8"], "between 1 and the model's block size"),
])
def test_bad_eval_input_is_one_line(run, args, words):
    r = vmd("eval", run, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr.strip().splitlines()[-1], r.stderr


def test_eval_samples_without_the_corpus_scores_what_it_can(run, judge, tmp_path):
    moved = tmp_path / "elsewhere.txt"
    corpus = run.parent / "corpus.txt"
    corpus.rename(moved)
    try:
        r = vmd("eval", run, "--samples", "4", "-k", "1", "--judge", judge, "--json")
    finally:
        moved.rename(corpus)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)["rows"]
    assert row["gen_ppl"] > 1 and "word_validity" not in row and "no word validity" in r.stderr


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_reader_that_goes_away_ends_the_command_quietly_with_exit_0(fmt):
    import shlex
    import subprocess
    import sys

    cmd = f"{shlex.quote(sys.executable)} -m vmd_cli sample shakespeare-bd3-block4 -n 100 -k 1 --format {fmt} | head -c 5"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
    assert r.returncode == 0 and len(r.stdout) == 5 and r.stderr == "", r.stderr


def test_eval_samples_of_a_run_with_its_own_vocabulary_go_on_without_the_default_judge(run):
    r = vmd("eval", run, "--samples", "4", "--steps-per-block", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert "no gen-PPL: the bundled judge shakespeare-ar reads another vocabulary" in " ".join(r.stderr.split())
    rows = json.loads(r.stdout)["rows"]
    assert rows and all("gen_ppl" not in row and "unigram_entropy_bits" in row for row in rows)
    for args, words in [(["--samples", "0"], "--samples must be >= 1"), (["--samples", "-2"], "--samples must be >= 1"),
                        (["--seed", "-1", "--samples", "2"], "--seed must be >= 0")]:
        bad = vmd("eval", run, *args)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    s = vmd("sample", run, "--seed", "-1")
    assert s.returncode == 2 and "sample.seed: -1 is out of range" in s.stderr


def test_lengths_and_prompt_files_are_bounded_before_any_memory_is_taken(tmp_path):
    r = vmd("sample", "shakespeare-block4", "--length=1000000000")
    assert r.returncode == 2 and "more than the 1,000,000 tokens" in r.stderr, r.stderr
    r = vmd("sample", "shakespeare-block4", "--prompt-file", "/dev/zero")
    assert r.returncode == 2 and "is not a regular file" in r.stderr, r.stderr
