"""Vocabulary: tokens <-> integer ids (id 0 is "<unk>"), and the id files on disk. A "char" token is one
Unicode code point (a Chinese character, never its UTF-8 bytes); a "word" token a run of non-whitespace, or
"\n" alone. The vocabulary records its tokenizer (vocab.json, checkpoints): generation encodes alike."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from lyricist.data.corpus import atomic_write_bytes, write_text

UNK_TOKEN = "<unk>"
NEWLINE_TOKEN = "\n"
# vocab.json's format, by tokenizer: a char vocabulary's file is unchanged from before words.
FORMATS = {"char": "lyricist-char-vocab", "word": "lyricist-word-vocab"}
VOCAB_VERSION = 1

_WORD = re.compile(r"\n|[^\s]+")  # a line break alone, or a run of non-whitespace


def tokenize(text: str, tokenizer: str = "char") -> list[str]:
    """The tokens of `text`: its characters ("char"), or its words and "\\n"s ("word")."""
    return _WORD.findall(text) if tokenizer == "word" else list(text)


class VocabError(ValueError):
    """A vocabulary or id file on disk is malformed."""


class Vocab:
    """Maps tokens (characters, or words) to ids and back: `itos[i]` is id i's token; id 0, "<unk>",
    stands for every token it lacks (unseen, rarer than `min_freq`, or beyond `max_vocab_size`)."""

    def __init__(self, itos: list[str], counts: dict[str, int] | None = None,
                 tokenizer: str = "char") -> None:
        if not itos or itos[0] != UNK_TOKEN:
            raise VocabError(f"itos must start with {UNK_TOKEN!r} at index 0, got {itos[:3]!r}...")
        if duplicates := sorted(token for token, n in Counter(itos).items() if n > 1):
            raise VocabError(f"itos lists tokens more than once: {duplicates!r}; every token needs one id.")
        for token in itos[1:]:
            if tokenizer == "char" and (not isinstance(token, str) or len(token) != 1):
                raise VocabError(f"every token after {UNK_TOKEN!r} must be one character, got {token!r}.")
            if tokenizer == "word" and not (isinstance(token, str) and _WORD.fullmatch(token)):
                raise VocabError(f"every word token after {UNK_TOKEN!r} must be '\\n' or a non-empty "
                                 f"string without whitespace, got {token!r}.")
        self.tokenizer: str = tokenizer
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {token: index for index, token in enumerate(self.itos)}
        self.counts: dict[str, int] = dict(counts or {})
        self.unk_index: int = 0

    @classmethod
    def build(cls, text: str, min_freq: int = 1, tokenizer: str = "char",
              max_vocab_size: int | None = None) -> Vocab:
        """<unk>, then the tokens of `text` seen `min_freq` times, at most `max_vocab_size` (None: all), most frequent
        first, ties by code point: the same text gives the same ids (the seed's `list(set(...))` does not)."""
        counts = Counter(tokenize(text, tokenizer))
        order = sorted(counts, key=lambda token: (-counts[token], token))
        # A literal "<unk>" word in the text is the unknown token itself (id 0).
        kept = [token for token in order if counts[token] >= min_freq and token != UNK_TOKEN]
        # `counts` keeps the tokens left out too: a report says what min_freq and max_vocab_size dropped.
        return cls([UNK_TOKEN, *kept[:max_vocab_size]], {token: counts[token] for token in order}, tokenizer)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.itos == other.itos and self.tokenizer == other.tokenizer

    def tokenize(self, text: str) -> list[str]:
        """`text` cut into this vocabulary's kind of tokens (characters, or words and "\\n")."""
        return tokenize(text, self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """Ids of the tokens of `text`; tokens not in the vocabulary become `unk_index`."""
        return [self.stoi.get(token, self.unk_index) for token in tokenize(text, self.tokenizer)]

    def decode(self, ids: Iterable[int], unk: str = UNK_TOKEN) -> str:
        """Text of `ids` (a list, numpy array or tensor of ints). `unk_index` decodes to `unk`: "<unk>",
        plain to see in a sample; unk="" drops it, unk="\\ufffd" keeps one character per id."""
        if self.tokenizer == "char" and len(unk) == 1 and isinstance(ids, (np.ndarray, torch.Tensor)):
            return self._decode_chars(np.asarray(ids), unk)
        tokens = [unk if index == self.unk_index else self.itos[index] for index in map(self._checked, ids)]
        if self.tokenizer == "char":
            return "".join(tokens)
        words = [token for token in tokens if token]  # unk="" drops the word, not just its letters
        return "".join(word if i == 0 or NEWLINE_TOKEN in (word, words[i - 1]) else " " + word
                       for i, word in enumerate(words))

    def _checked(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self.itos):
            raise IndexError(f"id {index} is outside the vocabulary (0..{len(self.itos) - 1}); the ids were made "
                             "with a different vocabulary or model output size.")
        return index

    def _decode_chars(self, ids: np.ndarray, unk: str) -> str:
        """`decode` of a whole split of character ids at numpy speed (4 bytes a token, where a list takes 16)."""
        if ids.size:
            self._checked(ids.min() if ids.min() < 0 else ids.max())
        code_points = np.array([ord(unk), *map(ord, self.itos[1:])], dtype="<u4")  # (V,) id 0 is <unk>
        return code_points[ids.ravel()].tobytes().decode("utf-32-le")

    def decode_after(self, prefix: str, ids: Iterable[int], unk: str = UNK_TOKEN) -> str:
        """`prefix` followed by the text of `ids`, as `decode` would join them: for words, one
        space in between unless either side is a line break (or the prefix ends in whitespace)."""
        text = self.decode(ids, unk=unk)
        if (self.tokenizer == "char" or not text or not prefix or prefix[-1].isspace()
                or text.startswith(NEWLINE_TOKEN)):
            return prefix + text
        return f"{prefix} {text}"

    def unknown_tokens(self, text: str) -> list[str]:
        """Distinct tokens of `text` that would encode to `<unk>`, in order of appearance."""
        return list(dict.fromkeys(t for t in tokenize(text, self.tokenizer) if t not in self.stoi))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; a char vocabulary's is as before word vocabularies (no "tokenizer" key)."""
        tokenizer = {} if self.tokenizer == "char" else {"tokenizer": self.tokenizer}
        return {"format": FORMATS[self.tokenizer], "version": VOCAB_VERSION, **tokenizer,
                "unk_token": UNK_TOKEN, "itos": self.itos, "counts": self.counts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocab:
        if not isinstance(data, dict):
            raise VocabError(f"a vocabulary must be a JSON object, got {type(data).__name__}.")
        tokenizers = {fmt: name for name, fmt in FORMATS.items()}
        if data.get("format") not in tokenizers or data.get("version") != VOCAB_VERSION:
            raise VocabError(f"expected format={' or '.join(map(repr, FORMATS.values()))} version={VOCAB_VERSION}, "
                             f"got format={data.get('format')!r} version={data.get('version')!r}.")
        tokenizer = tokenizers[data["format"]]
        if data.get("tokenizer", tokenizer) != tokenizer:
            raise VocabError(f"format {data['format']!r} is a {tokenizer} vocabulary, but "
                             f"'tokenizer' says {data['tokenizer']!r}.")
        itos, counts = data.get("itos"), data.get("counts", {})
        if not isinstance(itos, list) or not all(isinstance(token, str) for token in itos):
            raise VocabError("'itos' must be a list of strings.")
        if not isinstance(counts, dict) or not all(isinstance(n, int) for n in counts.values()):
            raise VocabError("'counts' must map tokens to integers.")
        return cls(itos, counts, tokenizer)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as human-readable UTF-8 JSON (Chinese stays Chinese), atomically."""
        write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"vocabulary file {path} does not exist; build it with `dvc repro vocab` "
                                    "(after `dvc pull data/raw/*.dvc` for the raw corpora).")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, VocabError) as err:
            raise VocabError(f"vocabulary file {path} is malformed ({err}). Delete it and rebuild it "
                             "with `dvc repro vocab`.") from err


def check_useful(vocab: Vocab, min_freq: int, max_vocab_size: int | None, min_vocab_size: int) -> None:
    """Refuse a vocabulary of fewer than `min_vocab_size` (>= 1) tokens besides <unk>: a model of so few
    learns to repeat them (of <unk> alone: every id 0), with a perplexity near 1 that says nothing."""
    size = len(vocab) - 1
    if size >= min_vocab_size:
        return
    if not vocab.counts:
        raise VocabError("the train split holds no token: there is nothing to build a vocabulary from. "
                         "Check the corpus and data.max_chars (e.g. data.max_chars=null).")
    if size == 0:
        top, count = max(vocab.counts.items(), key=lambda item: (item[1], item[0]))
        raise VocabError(f"the vocabulary would be <unk> alone: no token of train occurs data.min_freq={min_freq} "
                         f"times (the most frequent, {top!r}, occurs {count:,}) or data.max_vocab_size="
                         f"{max_vocab_size} keeps none. Lower them, e.g. data.min_freq=1 data.max_vocab_size=null.")
    shown = ", ".join(map(repr, vocab.itos[1:]))
    raise VocabError(f"train's vocabulary holds {size} token(s) besides <unk> ({shown}), fewer than data.min_vocab_size="
                     f"{min_vocab_size}: a model of them learns nothing (e.g. a corpus of one repeated character). "
                     "Check the corpus, data.min_freq and data.max_vocab_size, or allow it on purpose with "
                     "data.min_vocab_size=1")


def unk_rate(ids: np.ndarray, text: str, tokenizer: str) -> float:
    """The share of `ids` (`text` encoded) that are <unk> (0.0 for no ids), less the literal "<unk>" words
    of `text` (PTB marks its rare words so: they are no token train's vocabulary lacks; no character is one)."""
    own = len(re.findall(r"(?<!\S)<unk>(?!\S)", text)) if tokenizer == "word" else 0
    return float(((ids == 0).sum() - own) / ids.size) if ids.size else 0.0  # id 0 is <unk>


# The id file's type: the smallest holding every id (a character corpus: 1-2 bytes a token, not 8).
ID_DTYPES = (np.uint8, np.uint16, np.int32)


def id_dtype(vocab_size: int) -> np.dtype:
    """uint8 for up to 256 ids, uint16 for up to 65,536, else int32 (ids below 2**31)."""
    if vocab_size > np.iinfo(np.int32).max + 1:
        raise ValueError(f"a vocabulary of {vocab_size:,} tokens does not fit int32 ids; cap it, e.g. "
                         "data.max_vocab_size=100000.")
    return next(np.dtype(t) for t in ID_DTYPES if vocab_size - 1 <= np.iinfo(t).max)


def encode_to_array(vocab: Vocab, text: str) -> np.ndarray:
    """Ids of `text` as a 1-D array of the smallest integer type that holds the vocabulary."""
    return np.asarray(vocab.encode(text), dtype=id_dtype(len(vocab)))  # (N,)


def save_ids(path: str | Path, ids: np.ndarray | list[int], vocab_size: int | None = None) -> None:
    """Save 1-D non-negative token ids as a `.npy` file, atomically, in the smallest integer type holding
    ids below `vocab_size` (the vocabulary's, so every split gets one type; None: the largest id + 1)."""
    array = np.asarray(ids)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}.")
    largest = int(array.max()) if array.size else -1
    if array.size and (array.min() < 0 or largest > np.iinfo(np.int32).max):
        raise ValueError(f"ids must lie in [0, 2**31), got min {array.min()} max {largest}.")
    if vocab_size is not None and largest >= vocab_size:
        raise ValueError(f"id {largest} is outside a vocabulary of {vocab_size} tokens; encode with that vocabulary.")
    buffer = io.BytesIO()
    np.save(buffer, array.astype(id_dtype(largest + 1 if vocab_size is None else vocab_size), copy=False),
            allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def load_ids(path: str | Path) -> torch.Tensor:
    """Token ids saved by `save_ids` as a 1-D tensor of the file's integer type, memory-mapped (read
    when a batch touches them, shared between processes); batching makes each batch int64."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"token-id file {path} does not exist; build it with `dvc repro vocab` "
                                "(after `dvc pull data/raw/*.dvc` for the raw corpora).")
    try:
        # "c" (copy on write): writable, so torch takes it without a warning; nothing reaches the file.
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise VocabError(f"token-id file {path} is not a readable .npy file ({err}). Rebuild it with `dvc repro vocab`.") from err
    if not isinstance(array, np.ndarray) or array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise VocabError(f"token-id file {path} should hold a 1-D integer array, got shape "
                         f"{getattr(array, 'shape', '?')} dtype {getattr(array, 'dtype', '?')}. Rebuild it "
                         "with `dvc repro vocab`.")
    if array.dtype.type not in (*ID_DTYPES, np.int64) or not array.dtype.isnative:  # else torch takes it as it is
        return torch.from_numpy(array.astype(np.int64))  # (N,) a rare type: one copy
    return torch.from_numpy(array)  # (N,)
