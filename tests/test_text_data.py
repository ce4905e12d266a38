import hashlib
import os
import socket
import zipfile
from pathlib import Path

import pytest
import torch

import vmd
from vmd import config as C
from vmd.runtime.errors import ConfigError, DataError
from vmd.tasks import make_task
from vmd.tasks import text8 as T8
from vmd.tasks.text import resolve_file

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()


def prose(n_words: int, seed: int = 0) -> str:
    """Lines of ASCII words: every character shows up early, so all splits share one alphabet."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(WORDS), (n_words,), generator=g).tolist()
    lines = [" ".join(WORDS[i] for i in picks[k:k + 9]) + "." for k in range(0, n_words, 9)]
    return "\n".join(lines) + "\n"


def text_cfg(file, **task):
    return C.from_dict({"task": {"name": "text", "file": str(file), "length": 16, **task}}).task


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(prose(900), encoding="utf-8")
    return path


def test_char_vocabulary_splits_windows_and_eval_sequences(corpus):
    text = corpus.read_text(encoding="utf-8")
    n = len(text)
    train, valid, test = text[: n * 90 // 100], text[n * 90 // 100: n * 95 // 100], text[n * 95 // 100:]
    task = make_task(text_cfg(corpus))
    import hashlib

    assert task.vocab == len(set(text)) and task.state() == {"chars": "".join(sorted(set(text))),
                                                           "corpus_sha256": hashlib.sha256(text.encode()).hexdigest()}
    assert task.length == 16 and task.layout is None
    task.prepare()
    x, given = task.train_batch(64, torch.Generator().manual_seed(1))
    assert given is None and x.shape == (64, 16) and x.dtype == torch.long and int(x.max()) < task.vocab
    assert all(row in train for row in task.format(x))  # windows of the training split, never across splits
    again, _ = task.train_batch(64, torch.Generator().manual_seed(1))
    other, _ = task.train_batch(64, torch.Generator().manual_seed(2))
    assert torch.equal(x, again) and not torch.equal(x, other)
    for name, part in (("valid", valid), ("test", test)):
        seqs = task.eval_sequences(name)
        assert seqs.shape == (len(part) // 16, 16)
        assert "".join(task.format(seqs)) == part[: len(part) // 16 * 16]  # consecutive, remainder dropped
    assert torch.equal(task.eval_sequences("test", 3), task.eval_sequences("test")[:3])
    with pytest.raises(ValueError, match="valid' or 'test"):
        task.eval_sequences("train")
    start, given = task.start(2)
    assert given is None and task.format(start) == ["_" * 16] * 2
    masked = x[:1].clone()
    masked[0, ::2] = task.vocab
    assert task.format(masked)[0][1::2] == task.format(x[:1])[0][1::2] and set(task.format(masked)[0][::2]) == {"_"}


def test_metrics_are_the_sample_count_and_unigram_entropy(corpus):
    task = make_task(text_cfg(corpus))
    uniform = torch.arange(4).repeat(8, 4)  # 4 tokens, equally often
    assert task.metrics(uniform) == {"samples": 8, "unigram_entropy_bits": pytest.approx(2.0)}
    assert task.metrics(torch.zeros(3, 16, dtype=torch.long))["unigram_entropy_bits"] == pytest.approx(0.0)


def test_a_task_rebuilt_from_its_state_needs_no_corpus(corpus):
    cfg = text_cfg(corpus)
    task = make_task(cfg)
    x, _ = task.train_batch(4, torch.Generator().manual_seed(0))
    state = task.state()
    corpus.unlink()
    again = make_task(cfg, state)  # builds, formats, starts and scores without the file
    assert again.vocab == task.vocab and again.format(x) == task.format(x)
    assert torch.equal(again.start(3)[0], task.start(3)[0]) and again.metrics(x) == task.metrics(x)
    with pytest.raises(DataError, match="corpus.txt' not found"):  # batches read the corpus, lazily
        again.train_batch(1)


def test_a_folder_is_its_files_in_name_order_a_bom_dropped_and_fifos_and_loops_passed_over(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_text(prose(500, seed=2), encoding="utf-8")
    (folder / "a.txt").write_bytes(b"\xef\xbb\xbf" + prose(500, seed=1).encode())
    (folder / ".hidden").write_bytes(b"\xff not text, and not read")
    (folder / "sub").mkdir()
    os.mkfifo(folder / "pipe")  # never opened: reading it would wait for a writer forever
    (folder / "loop1").symlink_to("loop2")
    (folder / "loop2").symlink_to("loop1")
    (folder / "up").symlink_to("..")
    task = make_task(text_cfg(folder))
    task.prepare()
    whole = prose(500, seed=1) + "\n" + prose(500, seed=2)
    n = len(whole)
    assert "".join(task.format(task.eval_sequences("test"))) == whole[n * 95 // 100:][: (n - n * 95 // 100) // 16 * 16]
    assert "\ufeff" not in task.state()["chars"]


def test_sentencepiece_trains_on_the_training_split_and_round_trips(corpus):
    cfg = text_cfg(corpus, tokenizer="sentencepiece", vocab_size=60)
    task = make_task(cfg)
    assert task.vocab == 60 and set(task.state()) == {"sentencepiece", "corpus_sha256"}
    assert make_task(cfg).state() == task.state()  # deterministic training
    text = corpus.read_text(encoding="utf-8")
    n = len(text)
    seqs = task.eval_sequences("valid")
    assert seqs.shape[1] == 16 and int(seqs.max()) < 60
    decoded = "".join(task.format(seqs))
    assert text[n * 90 // 100:].startswith(decoded) and len(decoded) > 1.3 * seqs.numel()  # pieces of several chars
    x, _ = task.train_batch(8, torch.Generator().manual_seed(0))
    corpus.unlink()
    again = make_task(cfg, task.state())
    assert again.vocab == 60 and again.format(x) == task.format(x)
    with pytest.raises(DataError, match="has 60 pieces, the config's task.vocab_size is 61"):
        make_task(text_cfg(corpus, tokenizer="sentencepiece", vocab_size=61), task.state())


@pytest.mark.parametrize("size, words", [(5000, "too large .* at most \\d+ pieces"), (10, "too small .* needs \\d+ pieces")])
def test_a_sentencepiece_vocabulary_the_corpus_cannot_give_is_one_error(corpus, size, words):
    with pytest.raises(DataError, match=words):
        make_task(text_cfg(corpus, tokenizer="sentencepiece", vocab_size=size))


def test_bad_text_files_are_one_error_naming_the_detail(tmp_path, monkeypatch):
    def fails(file, words):
        with pytest.raises(DataError, match=words) as e:
            make_task(text_cfg(file))
        assert "\n" not in str(e.value)

    fails(tmp_path / "nope.txt", rf"'{tmp_path / 'nope.txt'}' not found \(looked at {tmp_path / 'nope.txt'}\);")
    monkeypatch.chdir(tmp_path)
    beside = Path(vmd.__file__).resolve().parents[1] / "nope.txt"
    fails("nope.txt", rf"'nope.txt' not found \(looked at {tmp_path / 'nope.txt'} and {beside}\); give the text file or folder")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(prose(200).encode() + "caf\xe9\n".encode("latin-1"))
    fails(bad, rf"latin1.txt is not UTF-8 text: byte 0xe9 at byte offset {len(prose(200)) + 3:,} \(line 24\)")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\xef\xbb\xbf")
    fails(empty, "empty.txt is empty")
    (tmp_path / "none").mkdir()
    fails(tmp_path / "none", "holds no files")
    short = tmp_path / "short.txt"
    short.write_text("a few words, not enough for a sequence of sixteen in each split\n" * 3)
    fails(short, "too short for task.length=16: its valid split has 10 characters.*at least about 320 characters")
    archive = tmp_path / "t.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("t.txt", "text")
    fails(archive, "is a zip archive, not text")
    locked = tmp_path / "locked.txt"
    locked.write_text(prose(900))
    real = Path.read_bytes

    def read_bytes(self):
        if self == locked:
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    fails(locked, r"cannot read .*locked.txt \(Permission denied\)")


def test_a_relative_file_is_also_looked_up_beside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_file("vmd/tasks/text.py") == Path(vmd.__file__).resolve().parent / "tasks" / "text.py"
    (tmp_path / "vmd").mkdir()
    (tmp_path / "vmd" / "own.txt").write_text("x")
    assert resolve_file("vmd/own.txt") == Path("vmd/own.txt")  # the working directory first


@pytest.mark.parametrize("task, words", [
    ({"tokenizer": "sentencepiece", "file": "x.txt"}, "task.vocab_size is 0"),
    ({"tokenizer": "sentencepiece", "vocab_size": 100}, "needs task.file"),
    ({"vocab_size": 100, "file": "x.txt"}, "applies to task.tokenizer sentencepiece"),
    ({"length": 0}, "task.length: 0 is out of range"),
    ({"tokenizer": "bpe"}, "char, sentencepiece"),
])
def test_text_settings_are_checked(task, words):
    with pytest.raises(ConfigError, match=words):
        C.from_dict({"task": {"name": "text", **task}})


def test_a_saved_state_that_does_not_fit_is_one_error(corpus):
    with pytest.raises(DataError, match="not text8's 27 characters"):
        make_task(text_cfg(""), {"chars": "abc"})
    with pytest.raises(DataError, match="malformed"):
        make_task(text_cfg(corpus), {"chars": "ba"})
    with pytest.raises(DataError, match="no 'chars'"):
        make_task(text_cfg(corpus), {"sentencepiece": "AAAA"})
    with pytest.raises(DataError, match="cannot be read"):
        make_task(text_cfg(corpus, tokenizer="sentencepiece", vocab_size=60), {"sentencepiece": "AAAA"})


# text8, with a few-KB stand-in: the module's published sizes, hashes, address and splits patched


@pytest.fixture
def fake_text8(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    text = "".join(T8.CHARS[i] for i in torch.randint(27, (3000,), generator=g).tolist()).encode()
    archive = tmp_path / "origin" / "text8.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("text8", text)
    data = archive.read_bytes()
    monkeypatch.setattr(T8, "URL", archive.as_uri())
    monkeypatch.setattr(T8, "ZIP_SIZE", len(data))
    monkeypatch.setattr(T8, "ZIP_SHA1", hashlib.sha1(data).hexdigest())
    monkeypatch.setattr(T8, "TEXT_SIZE", len(text))
    monkeypatch.setattr(T8, "TEXT_SHA1", hashlib.sha1(text).hexdigest())
    monkeypatch.setattr(T8, "SPLITS", (2400, 300, 300))
    monkeypatch.setattr(T8, "BLOCK", 512)  # several chunks, as a real download
    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path / "cache"))
    return text.decode(), archive


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/text8.zip"


def test_text8_is_downloaded_verified_split_and_cached(fake_text8, tmp_path, monkeypatch):
    text, _ = fake_text8
    labels = []
    task = make_task(text_cfg(""))
    assert task.vocab == 27 and task.state() == {"chars": " abcdefghijklmnopqrstuvwxyz"}
    task.prepare(lambda done, total, label: labels.append((done, total, label)))
    folder = tmp_path / "cache" / "text8"
    assert sorted(p.name for p in folder.iterdir()) == ["splits-v1.safetensors", "text8.zip"]
    assert labels[0][2].startswith(f"downloading text8 from {T8.URL} -> {folder / 'text8.zip'}")
    assert max(d for d, t, label in labels if label.startswith("downloading")) == T8.ZIP_SIZE
    assert "".join(task.format(task.eval_sequences("valid"))) == text[2400:2400 + 18 * 16]
    assert "".join(task.format(task.eval_sequences("test", 2))) == text[2700:2732]
    monkeypatch.setattr(T8, "URL", closed_port_url())  # from now on offline
    labels.clear()
    make_task(text_cfg("")).prepare(lambda *a: labels.append(a))
    assert labels == [(1, 1, f"using cached text8 splits: {folder / 'splits-v1.safetensors'}")]
    cached = folder / "splits-v1.safetensors"
    spoilt = bytearray(cached.read_bytes())
    spoilt[-1] ^= 1
    cached.write_bytes(bytes(spoilt))
    labels.clear()
    again = make_task(text_cfg(""))
    again.prepare(lambda *a: labels.append(a))  # rebuilt from the zip already there, without the network
    assert any("checksum mismatch" in label for *_, label in labels)
    assert torch.equal(again.eval_sequences("valid"), task.eval_sequences("valid"))


def test_a_text8_zip_that_does_not_match_is_refused_and_nothing_stays(fake_text8, tmp_path, monkeypatch):
    folder = tmp_path / "cache" / "text8"
    monkeypatch.setattr(T8, "ZIP_SHA1", "0" * 40)
    with pytest.raises(DataError, match="is not the published one .* refused, nothing kept"):
        make_task(text_cfg("")).prepare()
    assert list(folder.iterdir()) == []
    monkeypatch.setattr(T8, "ZIP_SIZE", 100)  # a longer answer than the zip is stopped at once
    with pytest.raises(DataError, match="more than 100 bytes"):
        make_task(text_cfg("")).prepare()
    assert list(folder.iterdir()) == []


def test_text8_offline_says_where_to_put_the_zip_and_a_placed_zip_is_used(fake_text8, tmp_path, monkeypatch):
    _, archive = fake_text8
    target = tmp_path / "cache" / "text8" / "text8.zip"
    monkeypatch.setattr(T8, "URL", closed_port_url())
    with pytest.raises(DataError) as e:
        make_task(text_cfg("")).prepare()
    msg = str(e.value)
    assert msg.startswith("could not download text8 from http://127.0.0.1") and "refused" in msg
    assert f"at {target} by hand" in msg and "--set task.file=PATH" in msg and "\n" not in msg
    assert list(target.parent.iterdir()) == []
    monkeypatch.setattr(T8, "URL", "file:///no/such/dir/text8.zip")
    with pytest.raises(DataError, match="could not download text8 from file:///no/such"):
        make_task(text_cfg("")).prepare()
    target.write_bytes(archive.read_bytes()[:-1])  # a damaged zip put there by hand: refused, kept for the user
    with pytest.raises(DataError, match="is not text8.zip as published .* delete it to download it again"):
        make_task(text_cfg("")).prepare()
    target.write_bytes(archive.read_bytes())
    task = make_task(text_cfg(""))
    task.prepare()
    assert task.eval_sequences("valid").shape == (18, 16)


def test_an_interrupted_download_leaves_no_temporary_file(fake_text8, tmp_path):
    def interrupt(done, total, label):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_task(text_cfg("")).prepare(interrupt)
    assert list((tmp_path / "cache" / "text8").iterdir()) == []


def test_a_text8_member_that_does_not_match_is_refused(fake_text8, monkeypatch):
    monkeypatch.setattr(T8, "TEXT_SHA1", "0" * 40)
    with pytest.raises(DataError, match="its member 'text8' is not text8 as published"):
        make_task(text_cfg("")).prepare()


@pytest.mark.parametrize("tokenizer,size", [("char", 0), ("sentencepiece", 60)])
def test_a_character_only_the_test_split_holds_is_a_token_not_a_refusal(tmp_path, tokenizer, size):
    odd = tmp_path / "odd.txt"
    odd.write_text(prose(900) + "the end is \u00e9 and _ here\n", encoding="utf-8")
    task = make_task(text_cfg(odd, tokenizer=tokenizer, vocab_size=size))
    assert {"\u00e9", "_"} <= task.tokenizer.alphabet
    assert "\u00e9" in task.split_text("test") and "\u00e9" not in task.split_text("train")
    assert task.encode_prompt("\u00e9").numel() >= 1


def test_the_shipped_corpus_is_found_by_name_and_by_its_old_path_and_checked(monkeypatch):
    import vmd.corpora as corpora
    from vmd.tasks.text import resolve_file

    path = resolve_file("tinyshakespeare")
    assert path.name == "tinyshakespeare.txt" and path.parent.name == "corpora"
    assert resolve_file("../shared/data/nowhere/tinyshakespeare.txt") == path  # as configs before it shipped
    monkeypatch.setattr(corpora, "_CHECKED", set())
    monkeypatch.setitem(corpora.BUNDLED, "tinyshakespeare", ("tinyshakespeare.txt", "0" * 64))
    with pytest.raises(DataError, match="bundled corpus tinyshakespeare .* is damaged"):
        resolve_file("tinyshakespeare")


def test_a_failed_text8_start_leaves_no_run_directory(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vmd_cli.main import app

    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(T8, "URL", closed_port_url())  # offline
    run = tmp_path / "runs" / "text8"
    args = ["train", "--preset", "text8-bd3-block4", "--set", "model.dim=16", "--set", "model.layers=1",
            "--set", "model.heads=2", "--set", "device.device=cpu", "--set", "device.precision=fp32",
            "--set", "train.steps=1000000000", "--out", str(run)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "text8" in r.output, r.output
    assert "note: on this CPU a step takes at least" in r.output and "sized for a GPU" in r.output
    assert not run.exists() and (tmp_path / "runs").exists()  # the run's own folder only: its parent stays


def test_a_device_or_a_corpus_over_the_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import vmd.tasks.text as text

    with pytest.raises(DataError, match="/dev/zero is not a regular file or folder"):
        make_task(text_cfg("/dev/zero"))
    big = tmp_path / "big.txt"
    big.write_text(prose(900))
    monkeypatch.setattr(text, "MAX_CORPUS_BYTES", 1000)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read a corpus over the cap"))
    with pytest.raises(DataError, match="more than the 0 GiB vmd reads into memory"):
        make_task(text_cfg(big))


def test_other_text_under_the_run_s_corpus_name_is_refused(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(prose(900))
    task = make_task(text_cfg(corpus))
    corpus.write_text(prose(900, seed=7))  # the same alphabet, another text
    again = make_task(text_cfg(corpus), task.state())
    with pytest.raises(DataError, match="is not the text this run was made on"):
        again.prepare()
    old = {k: v for k, v in task.state().items() if k != "corpus_sha256"}  # a run from before the hash: not checked
    make_task(text_cfg(corpus), old).prepare()
