"""Text to token ids and back: one token per character, or sentencepiece pieces.

Both keep the text exactly (nothing normalised): decoding the ids of a text gives it back. A
tokenizer's ``state()`` is a dict of strings that rebuilds it (:func:`from_state`), stored with
a run so that the run loads without its corpus. ``encode`` raises :class:`UnknownChar` at the
first character the tokenizer has no token for, so the caller can say where it is.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np

from vmd.runtime.errors import DataError

CHUNK = 1 << 16  # characters per piece of text handed to sentencepiece at once (training and encoding)
SPACE = "\u2581"  # sentencepiece's visible space
MASK = "_"  # how format shows a masked position
UNK = "\u2047"  # and sentencepiece's <unk> (as sentencepiece shows it)


class UnknownChar(Exception):
    def __init__(self, pos: int, char: str):
        super().__init__(pos, char)
        self.pos, self.char = pos, char


def describe(char: str) -> str:
    return f"{char!r} (U+{ord(char):04X})"


def _codes(text: str) -> np.ndarray:
    """The text's code points, one per character (uint8 for ASCII, the common case, else uint32)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class CharTokenizer:
    """Token i is the i-th character of ``chars`` (sorted by code point, no repeats)."""

    def __init__(self, chars: str):
        if not chars or list(chars) != sorted(set(chars)):
            raise DataError("the saved character vocabulary is malformed (empty, unsorted or repeated characters)")
        self.chars = chars
        self.vocab = len(chars)
        self.alphabet = frozenset(chars)
        self._table = np.array([ord(c) for c in chars], dtype=np.uint32)
        # ASCII code -> id (-1: none), one lookup per byte; ASCII sorts first, so its ids are < 128
        self._ascii = np.full(256, -1, dtype=np.int16)
        for i, c in enumerate(chars):
            if c.isascii():
                self._ascii[ord(c)] = i

    def encode(self, text: str) -> np.ndarray:
        codes = _codes(text)
        if codes.dtype == np.uint8:
            ids = self._ascii[codes]
            hit = ids >= 0
        else:
            ids = np.searchsorted(self._table, codes)
            hit = self._table[np.minimum(ids, self.vocab - 1)] == codes
        if not hit.all():
            pos = int(np.argmin(hit))
            raise UnknownChar(pos, text[pos])
        return ids

    def decode(self, ids) -> str:
        return "".join(self.chars[i] if 0 <= i < self.vocab else MASK for i in ids)

    def state(self) -> dict[str, str]:
        return {"chars": self.chars}


def chunks(text: str, size: int = CHUNK) -> list[str]:
    """``text`` cut into pieces of at most ``size`` characters whose concatenation is ``text``: after a
    newline where there is one (a newline is a piece of its own, so the cut changes nothing), else
    before a space, else anywhere."""
    out, pos, n = [], 0, len(text)
    while pos < n:
        end = min(pos + size, n)
        if end < n:
            cut = text.rfind("\n", pos, end) + 1
            if cut <= pos:
                cut = text.rfind(" ", pos + 1, end)
            end = cut if cut > pos else end
        out.append(text[pos:end])
        pos = end
    return out


class PieceTokenizer:
    """A sentencepiece model, ids 0..vocab-1: <unk> (never produced for text whose characters the
    model has) and real pieces; no BOS, EOS or padding tokens."""

    def __init__(self, proto: bytes):
        import sentencepiece as spm

        self.proto = proto
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(proto)
        except Exception as e:  # noqa: BLE001 - any failure to parse is a malformed state
            raise DataError(f"the saved sentencepiece model cannot be read ({type(e).__name__})") from None
        self.vocab = self.sp.get_piece_size()
        self.pieces = [self.sp.id_to_piece(i).replace(SPACE, " ") for i in range(self.vocab)]
        special = [self.sp.is_unknown(i) or self.sp.is_control(i) for i in range(self.vocab)]
        self.pieces = [UNK if s else p for p, s in zip(self.pieces, special)]
        self.alphabet = frozenset("".join(p for p, s in zip(self.pieces, special) if not s))

    @classmethod
    def train(cls, text: str, vocab_size: int, where: str) -> "PieceTokenizer":
        """BPE on ``text``: deterministic (one thread, fixed seed, no sampling of the input) and
        fast to train, which a new run does every time; every character of ``text`` gets a piece
        (coverage 1.0), and newlines (and carriage returns), which sentencepiece would drop, are
        pieces of their own."""
        import sentencepiece as spm

        spm.set_random_generator_seed(0)
        out = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(chunks(text)), model_writer=out, vocab_size=vocab_size, model_type="bpe",
                character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
                user_defined_symbols=[c for c in "\n\r" if c in text], normalization_rule_name="identity",
                remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
                max_sentence_length=4 * CHUNK + 16, input_sentence_size=0, shuffle_input_sentence=False,
                num_threads=1, minloglevel=2)
        except RuntimeError as e:
            msg = str(e)
            most = re.search(r"value <= (\d+)", msg)
            if most:
                raise DataError(f"task.vocab_size={vocab_size} is too large for {where}: sentencepiece can make at "
                                f"most {most[1]} pieces from it; set task.vocab_size <= {most[1]}") from None
            least = re.search(r"required_chars\. (\d+) vs (\d+)", msg)
            if least:
                raise DataError(f"task.vocab_size={vocab_size} is too small for {where}: it needs {least[2]} pieces "
                                f"(one per distinct character, and <unk>); set task.vocab_size >= {least[2]}") from None
            raise DataError(f"sentencepiece could not train on {where}: {msg.strip().splitlines()[-1]}") from None
        tok = cls(out.getvalue())
        missing = set(text) - tok.alphabet
        if missing:  # coverage 1.0 should make this impossible: refuse rather than train on <unk>
            raise DataError(f"sentencepiece left {describe(min(missing))} of {where} without a piece")
        return tok

    def encode(self, text: str) -> np.ndarray:
        missing = set(text) - self.alphabet
        if missing:
            pos = min(text.find(c) for c in missing)
            raise UnknownChar(pos, text[pos])
        parts = self.sp.encode(chunks(text), num_threads=2)
        return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.zeros(0, np.int64)

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] if 0 <= i < self.vocab else MASK for i in ids)

    def state(self) -> dict[str, str]:
        return {"sentencepiece": base64.b64encode(self.proto).decode("ascii")}


def from_state(tokenizer: str, state: dict) -> CharTokenizer | PieceTokenizer:
    """The tokenizer a run stored (``state()``), for a config whose ``task.tokenizer`` is ``tokenizer``."""
    key = {"char": "chars", "sentencepiece": "sentencepiece"}[tokenizer]
    value = state.get(key)
    if not isinstance(value, str):
        raise DataError(f"the saved tokenizer state has no {key!r} for task.tokenizer {tokenizer} "
                        f"(it has {', '.join(map(repr, state)) or 'nothing'})")
    if tokenizer == "char":
        return CharTokenizer(value)
    try:
        return PieceTokenizer(base64.b64decode(value, validate=True))
    except binascii.Error:
        raise DataError("the saved sentencepiece model is not valid base64") from None
