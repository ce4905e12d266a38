"""Text as a masked-diffusion task: sequences of ``task.length`` tokens of text8 or of your own text.

Splits, by a stated rule:
- text8 (``task.file`` empty; ``vmd.tasks.text8``): the first 90M characters train, the next 5M
  valid, the last 5M test (the standard).
- Your own text (``task.file``: a UTF-8 file, or a folder whose regular files, hidden ones left out,
  are read in sorted name order and joined with "\\n"): nothing is normalised except that a
  UTF-8 byte order mark at the start of a file is dropped. The text is split by characters, the
  first 90% train, the next 5% valid, the last 5% test (contiguous, so no sequence straddles two
  splits), and each split is tokenised on its own.

Tokens: ``char`` is one token per character (text8: its 27 characters, ' ' then a-z; your own text:
every character of the whole corpus, in code point order, so that a rare character of the valid or
test split is a token too, never a refusal); ``sentencepiece`` is a BPE model of
``task.vocab_size`` pieces trained on the training split, plus one piece for each character that
only valid or test hold (``vmd.tasks.tokenizers``). Either is
``state()``, stored with the run: a task built from it needs no corpus to format, start or score
samples, and reads the corpus only when batches or evaluation sequences are asked for.

Training draws windows of ``length`` tokens at uniformly random offsets of the training split;
evaluation cuts valid or test into consecutive non-overlapping windows, the remainder dropped.
"""

from __future__ import annotations

import bisect
import codecs
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import vmd
from vmd.config import TaskConfig
from vmd.runtime.errors import DataError, shown
from vmd.corpora import bundled_corpus
from vmd.tasks import text8
from vmd.tasks.tokenizers import CharTokenizer, PieceTokenizer, UnknownChar, describe, from_state

SHARES = {"train": (0, 90), "valid": (90, 95), "test": (95, 100)}  # percent of the characters
WORD = re.compile(r"[^\W\d_]+")  # a word: a run of letters (word_validity)
ZIP_MAGIC = b"PK\x03\x04"
MAX_CORPUS_BYTES = 2 * 2**30  # a corpus is read whole: bounded before any of it is read


def resolve_file(value: str) -> Path:
    """``task.file`` as given (relative to the working directory), else, if relative, beside the
    checkout that holds the ``vmd`` package, else a corpus that ships with it (``vmd.corpora``:
    ``tinyshakespeare``, also under the file name older configs gave it)."""
    given = Path(value).expanduser()
    tried = [given]
    if not given.is_absolute():
        tried.append((Path(vmd.__file__).resolve().parents[1] / given).resolve())
    for path in tried:
        if path.exists():
            return path
    shipped = bundled_corpus(value)
    if shipped is not None:
        return shipped
    places = " and ".join(os.path.normpath(p.absolute())[:200] for p in tried)
    raise DataError(f"task.file {shown(value)} not found (looked at {places}); give the text file or folder: "
                    "vmd train --set task.file=PATH, vmd eval --data PATH")


@dataclass
class Corpus:
    path: Path
    text: str
    files: list[Path]
    starts: list[int]  # where each file's text begins in ``text``

    def where(self, pos: int) -> str:
        """The file and line of character ``pos``."""
        i = bisect.bisect_right(self.starts, pos) - 1
        line = self.text.count("\n", self.starts[i], pos) + 1
        return f"{self.files[i]} line {line}"

    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()

    def bounds(self, name: str) -> tuple[int, int]:
        lo, hi = SHARES[name]
        n = len(self.text)
        return n * lo // 100, n * hi // 100


def read_corpus(path: Path) -> Corpus:
    if path.is_dir():
        try:
            files = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
        except OSError as e:
            raise DataError(f"cannot read the folder {path} ({e.strerror or e})") from None
        if not files:
            raise DataError(f"the folder {path} holds no files to read as text")
    else:
        if not path.is_file():  # a device (/dev/zero), a FIFO: never read without end
            raise DataError(f"{path} is not a regular file or folder: give a text file or a folder of them")
        files = [path]
    size = sum(f.stat().st_size for f in files)
    if size > MAX_CORPUS_BYTES:
        raise DataError(f"{path} holds {size / 2**30:.1f} GiB of text, more than the {MAX_CORPUS_BYTES / 2**30:.0f} GiB "
                        "vmd reads into memory (about 7 bytes resident a character); train on a part of it")
    texts, starts, pos = [], [], 0
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {f} ({e.strerror or e})") from None
        if data.startswith(ZIP_MAGIC):
            raise DataError(f"{f} is a zip archive, not text: unzip it and give the text (for text8, leave "
                            f"task.file empty and put text8.zip at {text8.zip_path()})")
        skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
        try:
            text = data[skip:].decode("utf-8")
        except UnicodeDecodeError as e:
            at = skip + e.start
            line = data.count(b"\n", 0, at) + 1
            raise DataError(f"{f} is not UTF-8 text: byte 0x{data[at]:02x} at byte offset {at:,} (line {line}) "
                            "cannot be decoded") from None
        texts.append(text)
        starts.append(pos)
        pos += len(text) + 1
    corpus = Corpus(path, "\n".join(texts), files, starts)
    if not corpus.text:
        raise DataError(f"{path} is empty: there is no text to train on")
    return corpus


def _too_short(where: str, name: str, count: str, length: int, hint: str) -> DataError:
    return DataError(f"{where} is too short for task.length={length}: its {name} split has {count}, fewer than one "
                     f"sequence of {length} tokens; {hint}, or set a smaller task.length")


class TextTask:
    layout = None  # plain positions (the model's choice: learned or rotary)

    def __init__(self, cfg: TaskConfig, state: dict[str, str] | None = None):
        self.cfg = cfg
        self.length = cfg.length
        self.unit = "character" if cfg.tokenizer == "char" else "token"  # what a bit per token is per
        self._splits: dict[str, torch.Tensor] | None = None
        self._corpus: Corpus | None = None  # a new run's corpus, read once for its vocabulary, kept for prepare
        self._words: frozenset[str] | None = None  # the training split's words (word_validity)
        self.corpus_sha = (state or {}).get("corpus_sha256")  # your own text's, stored with the run (text8 has its own)
        if state:
            self.tokenizer = from_state(cfg.tokenizer, state)
            if not cfg.file and getattr(self.tokenizer, "chars", None) != text8.CHARS:
                raise DataError("the saved vocabulary is not text8's 27 characters, but task.file is empty (text8)")
            if cfg.tokenizer == "sentencepiece" and self.tokenizer.vocab != cfg.vocab_size:
                raise DataError(f"the saved sentencepiece model has {self.tokenizer.vocab} pieces, the config's "
                                f"task.vocab_size is {cfg.vocab_size}")
        elif not cfg.file:
            self.tokenizer = CharTokenizer(text8.CHARS)
        else:
            self._corpus = corpus = read_corpus(resolve_file(cfg.file))
            self.corpus_sha = corpus.sha256()
            self._check_lengths(corpus)
            train = corpus.text[slice(*corpus.bounds("train"))]
            alphabet = "".join(sorted(set(corpus.text)))  # the whole corpus's: a rare character anywhere has a token
            if cfg.tokenizer == "char":
                self.tokenizer = CharTokenizer(alphabet)
            else:  # pieces learned from the training split; characters only valid or test hold get one each
                rare = "".join(sorted(set(alphabet) - set(train)))
                self.tokenizer = PieceTokenizer.train(train + ("\n" + rare if rare else ""), cfg.vocab_size,
                                                      f"the training split of {corpus.path}")
        self.vocab = self.tokenizer.vocab

    def _check_lengths(self, corpus: Corpus) -> None:
        """Before any tokenizer is made: each split holds at least ``length`` characters (a token holds
        at least one)."""
        n, length = len(corpus.text), self.length
        for name in SHARES:
            lo, hi = corpus.bounds(name)
            if hi - lo < length:
                raise _too_short(corpus.path, name, f"{hi - lo:,} characters", length,
                                 f"the text needs at least about {20 * length:,} characters (it has {n:,})")

    def state(self) -> dict[str, str]:
        """The vocabulary or tokenizer, and for your own text the corpus's SHA-256 (a resume or an
        evaluation on other text is refused)."""
        return {**self.tokenizer.state(), **({"corpus_sha256": self.corpus_sha} if self.corpus_sha else {})}

    def same_vocabulary(self, other) -> bool:
        """Whether ``other`` (any task) reads and writes the same tokens (a judge, the other panel)."""
        return isinstance(other, TextTask) and self.tokenizer.state() == other.tokenizer.state()

    def prepare(self, progress: Callable[[int, int, str], None] | None = None) -> None:
        """Tokenise the splits (text8: from its cache, made or downloaded first if need be)."""
        if self._splits is not None:
            return
        progress = progress or (lambda *a: None)
        if not self.cfg.file:
            parts, where = text8.splits(progress), "text8"
        else:
            corpus = self._corpus or read_corpus(resolve_file(self.cfg.file))
            if self.corpus_sha and corpus.sha256() != self.corpus_sha:
                raise DataError(f"{corpus.path} is not the text this run was made on (its SHA-256 differs from the one "
                                "stored with the run); give the run's own corpus")
            where = str(corpus.path)
            how = "by characters" if self.cfg.tokenizer == "char" else f"into {self.vocab} sentencepiece pieces"
            label = f"tokenising {corpus.path} {how} (in memory)"
            dtype = np.uint8 if self.vocab <= 256 else np.int32
            parts = {}
            for done, name in enumerate(SHARES):
                progress(done, len(SHARES), label)
                lo, hi = corpus.bounds(name)
                try:
                    ids = self.tokenizer.encode(corpus.text[lo:hi])
                except UnknownChar as e:
                    raise DataError(f"{corpus.where(lo + e.pos)}: character {describe(e.char)} of the {name} split has "
                                    "no token in this run's vocabulary (was the text changed since the run was made?)"
                                    ) from None
                parts[name] = torch.from_numpy(ids.astype(dtype))
            progress(len(SHARES), len(SHARES), label)
            self._corpus = None
        for name, ids in parts.items():
            if len(ids) < self.length:
                raise _too_short(where, name, f"{len(ids):,} tokens", self.length, "give more text")
        self._splits = parts

    def train_batch(self, n: int, generator: torch.Generator | None = None):
        """``n`` windows of the training split at uniformly random offsets (drawn with ``generator``)."""
        self.prepare()
        ids = self._splits["train"]
        start = torch.randint(len(ids) - self.length + 1, (n,), generator=generator)
        return ids[start[:, None] + torch.arange(self.length)].long(), None

    def eval_sequences(self, split: str, max_sequences: int | None = None) -> torch.Tensor:
        """The ``split`` (valid or test) cut into consecutive non-overlapping windows of ``length``
        tokens, the remainder dropped; the first ``max_sequences`` of them."""
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
        if max_sequences is not None and max_sequences < 0:
            raise ValueError(f"max_sequences must be >= 0, not {max_sequences}")
        self.prepare()
        ids = self._splits[split]
        n = len(ids) // self.length
        if max_sequences is not None:
            n = min(n, max_sequences)
        return ids[: n * self.length].view(n, self.length).long()

    def start(self, n: int):
        return torch.full((n, self.length), self.vocab, dtype=torch.long), None

    def encode_prompt(self, text: str, what: str = "the prompt") -> torch.Tensor:
        """Token ids (1-D) of ``text``; characters outside the vocabulary are an error naming them."""
        missing = sorted(set(text) - self.tokenizer.alphabet)
        if missing:
            shown = ", ".join(describe(c) for c in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            chars = getattr(self.tokenizer, "chars", "")
            known = f" (its characters: {chars!r})" if 0 < len(chars) <= 80 else ""
            raise DataError(f"{what} has characters outside this run's vocabulary{known}: {shown}")
        return torch.from_numpy(self.tokenizer.encode(text).astype(np.int64))

    def format(self, x: torch.Tensor) -> list[str]:
        """Each sequence as text; a masked position shows as ``_``."""
        return [self.tokenizer.decode(row) for row in x.tolist()]

    def split_text(self, split: str) -> str:
        """A split (train, valid or test) as text, decoded from its tokens."""
        self.prepare()
        ids = self._splits[split].numpy()
        chars = getattr(self.tokenizer, "chars", "")
        if chars.isascii() and chars:  # one table lookup, not a string per character (text8: 90M)
            return np.frombuffer(chars.encode("ascii"), dtype=np.uint8)[ids].tobytes().decode("ascii")
        return self.tokenizer.decode(ids.tolist())

    def word_validity(self, samples: torch.Tensor) -> dict[str, float]:
        """The share of the samples' words found among the training split's words: a word is a run
        of letters, compared in lower case; each sample's first and last words are left out (the
        window may cut them). Concurrent drawing of a block's tokens breaks words, and this counts
        exactly those. Reads the corpus (text8: its cache) for the word list."""
        if self._words is None:
            self._words = frozenset(w.lower() for w in WORD.findall(self.split_text("train")))
        found = total = 0
        for text in self.format(samples):
            words = WORD.findall(text)[1:-1]
            total += len(words)
            found += sum(w.lower() in self._words for w in words)
        return {"word_validity": found / total if total else float("nan"), "words": total}

    def metrics(self, samples: torch.Tensor) -> dict[str, float]:
        """Cheap and honest, no corpus needed: the count, and the entropy (bits) of the samples' token
        frequencies (a collapsed sampler that repeats a few tokens scores low)."""
        x = samples.detach().reshape(-1).cpu().long()
        x = x[(x >= 0) & (x < self.vocab)]
        counts = torch.bincount(x, minlength=self.vocab).double()
        p = counts[counts > 0] / max(1.0, float(counts.sum()))
        return {"samples": int(samples.shape[0]), "unigram_entropy_bits": float(-(p * p.log2()).sum())}
