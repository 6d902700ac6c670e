"""Vocabulary: text <-> integer ids, index 0 reserved for "<unk>".

Two tokenizers (`data.tokenizer`):
- "char" (the default, the seeds'): one token per Unicode code point, so a Chinese character is
  one token (never its UTF-8 bytes);
- "word": whitespace-separated words; "\n" (present when `data.newline: keep`) stays a token of
  its own. Decoding joins words with single spaces and puts no space around "\n".

The vocabulary records its tokenizer (in vocab.json and in checkpoints), so generation encodes a
prefix and decodes output the way the training data was encoded. This module knows nothing of
models; it only maps text <-> integer ids and stores both on disk.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from lyricist.data.corpus import atomic_write_bytes

UNK_TOKEN = "<unk>"
NEWLINE_TOKEN = "\n"
VOCAB_FORMAT = "lyricist-char-vocab"   # a char vocabulary's file is unchanged from before words
WORD_VOCAB_FORMAT = "lyricist-word-vocab"
VOCAB_VERSION = 1
TOKENIZERS = ("char", "word")
FORMATS = {"char": VOCAB_FORMAT, "word": WORD_VOCAB_FORMAT}
# The vocabulary options and their defaults. The defaults are left out of prepared_with.json,
# so data prepared before these options existed (or with the defaults) reads as made with them.
OPTION_DEFAULTS = {"tokenizer": "char", "max_vocab_size": None}

_WORD = re.compile(r"\n|[^\s]+")  # a line break alone, or a run of non-whitespace


def tokenize(text: str, tokenizer: str = "char") -> list[str]:
    """The tokens of `text`: its characters ("char"), or its words and "\\n"s ("word")."""
    return _WORD.findall(text) if tokenizer == "word" else list(text)


def _is_word_token(token: object) -> bool:
    return isinstance(token, str) and (token == NEWLINE_TOKEN or
                                       (bool(token) and not any(c.isspace() for c in token)))


class VocabError(ValueError):
    """A vocabulary or id file on disk is malformed."""


class Vocab:
    """Maps tokens (characters, or words) to ids and back.

    `itos[i]` is the token with id i; `itos[0]` is always "<unk>", the id of every token the
    vocabulary does not know (unseen, rarer than `min_freq`, or beyond `max_vocab_size` when it
    was built).
    """

    def __init__(self, itos: list[str], counts: dict[str, int] | None = None,
                 tokenizer: str = "char") -> None:
        if tokenizer not in TOKENIZERS:
            raise VocabError(f"unknown tokenizer {tokenizer!r}; use one of {TOKENIZERS}.")
        if not itos or itos[0] != UNK_TOKEN:
            raise VocabError(f"itos must start with {UNK_TOKEN!r} at index 0, got {itos[:3]!r}...")
        if len(set(itos)) != len(itos):
            duplicates = sorted({token for token in itos if itos.count(token) > 1})
            raise VocabError(f"itos lists tokens more than once: {duplicates!r}; every token needs one id.")
        for token in itos[1:]:
            if tokenizer == "char" and (not isinstance(token, str) or len(token) != 1):
                raise VocabError(f"every token after {UNK_TOKEN!r} must be one character, got {token!r}.")
            if tokenizer == "word" and not _is_word_token(token):
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
        """Vocabulary of the tokens of `text` seen at least `min_freq` times, at most the
        `max_vocab_size` most frequent of them (None: no cap), plus "<unk>" at id 0.

        Order: most frequent first, ties by code point (of the character, or of the word read
        left to right), so the same text always gives the same ids (the MXNet seed's
        `list(set(...))` changes order between runs) and the cap cuts ties the same way.
        """
        assert tokenizer in TOKENIZERS and min_freq >= 1  # checked by lyricist.settings
        counts = Counter(tokenize(text, tokenizer))
        order = sorted(counts, key=lambda token: (-counts[token], token))
        # A literal "<unk>" word in the text is the unknown token itself (id 0).
        kept = [token for token in order if counts[token] >= min_freq and token != UNK_TOKEN]
        # `counts` keeps every token, including those left out, so a report can say what
        # min_freq and max_vocab_size dropped. (kept[:None] is all of them: no cap.)
        return cls([UNK_TOKEN, *kept[:max_vocab_size]], {token: counts[token] for token in order}, tokenizer)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.itos == other.itos and self.tokenizer == other.tokenizer

    __hash__ = None  # mutable lists inside; equal vocabularies need not share a hash

    def __repr__(self) -> str:
        if self.tokenizer == "char":
            return f"Vocab(size={len(self)}, first tokens={''.join(self.itos[1:21])!r})"
        return f"Vocab(size={len(self)}, tokenizer='word', first tokens={self.itos[1:11]!r})"

    def tokenize(self, text: str) -> list[str]:
        """`text` cut into this vocabulary's kind of tokens (characters, or words and "\\n")."""
        return tokenize(text, self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """Ids of the tokens of `text`; tokens not in the vocabulary become `unk_index`."""
        return [self.stoi.get(token, self.unk_index) for token in tokenize(text, self.tokenizer)]

    def decode(self, ids: Iterable[int], unk: str = UNK_TOKEN) -> str:
        """Text of `ids` (a list, numpy array or tensor of ints).

        `unk_index` decodes to `unk`: "<unk>" by default, so a generated sample shows plainly
        where the model chose the unknown token; pass unk="" to drop it or unk="\\ufffd" to
        keep one character per id.
        """
        size = len(self.itos)
        if self.tokenizer == "char" and len(unk) == 1 and isinstance(ids, (np.ndarray, torch.Tensor)):
            return self._decode_chars(np.asarray(ids), unk)
        tokens = []
        for raw_id in ids:
            index = int(raw_id)
            if not 0 <= index < size:
                raise IndexError(f"id {index} is outside the vocabulary (0..{size - 1}); the ids were made "
                                 "with a different vocabulary or model output size.")
            tokens.append(unk if index == self.unk_index else self.itos[index])
        if self.tokenizer == "char":
            return "".join(tokens)
        words = [token for token in tokens if token]  # unk="" drops the word, not just its letters
        return "".join(word if i == 0 or NEWLINE_TOKEN in (word, words[i - 1]) else " " + word
                       for i, word in enumerate(words))

    def _decode_chars(self, ids: np.ndarray, unk: str) -> str:
        """`decode` of a whole split of character ids at numpy speed (the train split, decoded
        for the copy rate): each id's code point looked up at once, 4 bytes a token meanwhile
        where a list of tokens takes 16."""
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.itos)):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise IndexError(f"id {bad} is outside the vocabulary (0..{len(self.itos) - 1}); the ids were made "
                             "with a different vocabulary or model output size.")
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
        """The JSON form. Its format names the tokenizer; a char vocabulary's is the same as
        before word vocabularies existed (so the default pipeline's outputs do not change)."""
        tokenizer = {} if self.tokenizer == "char" else {"tokenizer": self.tokenizer}
        return {"format": FORMATS[self.tokenizer], "version": VOCAB_VERSION, **tokenizer,
                "unk_token": UNK_TOKEN, "itos": self.itos, "counts": self.counts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocab:
        if not isinstance(data, dict):
            raise VocabError(f"a vocabulary must be a JSON object, got {type(data).__name__}.")
        tokenizers = {fmt: name for name, fmt in FORMATS.items()}
        if data.get("format") not in tokenizers or data.get("version") != VOCAB_VERSION:
            raise VocabError(f"expected format={VOCAB_FORMAT!r} or {WORD_VOCAB_FORMAT!r} version={VOCAB_VERSION}, "
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
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))

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


def check_useful(vocab: Vocab, min_freq: int, max_vocab_size: int | None) -> None:
    """Refuse a vocabulary of `<unk>` alone: every id would be 0, and a model trained on it
    reaches a perplexity of 1.00 that means nothing."""
    if len(vocab) > 1:
        return
    if not vocab.counts:
        raise VocabError("the train split holds no token: there is nothing to build a vocabulary from. "
                         "Check the corpus and data.max_chars (e.g. data.max_chars=null).")
    top, count = max(vocab.counts.items(), key=lambda item: (item[1], item[0]))
    raise VocabError(f"the vocabulary would be <unk> alone: no token of train occurs data.min_freq={min_freq} "
                     f"times (the most frequent, {top!r}, occurs {count:,}) or data.max_vocab_size="
                     f"{max_vocab_size} keeps none. Lower them, e.g. data.min_freq=1 data.max_vocab_size=null.")


def check_not_degenerate(vocab: Vocab, min_vocab_size: int) -> None:
    """Refuse a vocabulary of fewer than `min_vocab_size` tokens besides <unk>: a model of so few
    learns to repeat them, with a perplexity near 1 that says nothing (data.min_vocab_size=1 allows it)."""
    size = len(vocab) - 1
    if size >= min_vocab_size:
        return
    shown = ", ".join(map(repr, vocab.itos[1:]))
    raise VocabError(f"train's vocabulary holds {size} token(s) besides <unk> ({shown}), fewer than data.min_vocab_size="
                     f"{min_vocab_size}: a model of them learns nothing (e.g. a corpus of one repeated character). "
                     "Check the corpus, data.min_freq and data.max_vocab_size, or allow it on purpose with "
                     "data.min_vocab_size=1")


def unk_rate(ids: np.ndarray, own_unk: int = 0) -> float:
    """The share of `ids` that are <unk> (0.0 for no ids), less `own_unk` of them that the text
    itself wrote as "<unk>" (PTB marks its rare words so: they are no token train's vocabulary lacks)."""
    return float(((ids == 0).sum() - own_unk) / ids.size) if ids.size else 0.0  # id 0 is <unk>


def count_own_unk(text: str, tokenizer: str) -> int:
    """How many tokens of `text` are a literal "<unk>" word (a character never is one)."""
    return len(re.findall(r"(?<!\S)<unk>(?!\S)", text)) if tokenizer == "word" else 0


# The id file's integer type: the smallest that holds every id of the vocabulary. A character
# corpus (~65 to a few thousand ids) then takes 1-2 bytes a token on disk and in memory, not 8.
ID_DTYPES = (np.uint8, np.uint16, np.int32)
# Types `load_ids` hands to torch as they are (an older int32 or int64 file included); any other
# integer type is converted to int64 once, on loading.
_TORCH_ID_DTYPES = (np.uint8, np.uint16, np.int32, np.int64)


def id_dtype(vocab_size: int) -> np.dtype:
    """uint8 for up to 256 ids, uint16 for up to 65,536, else int32 (ids below 2**31)."""
    if vocab_size > np.iinfo(np.int32).max + 1:
        raise ValueError(f"a vocabulary of {vocab_size:,} tokens does not fit int32 ids; cap it, e.g. "
                         "data.max_vocab_size=100000.")
    return next(np.dtype(t) for t in ID_DTYPES if vocab_size - 1 <= np.iinfo(t).max)


def encode_to_array(vocab: Vocab, text: str) -> np.ndarray:
    """Ids of `text` as a 1-D array of the smallest integer type that holds the vocabulary."""
    return np.asarray(vocab.encode(text), dtype=id_dtype(len(vocab)))  # (N,)


def save_ids(path: str | Path, ids: np.ndarray | torch.Tensor | list[int], vocab_size: int | None = None) -> None:
    """Save a 1-D array of non-negative token ids as a `.npy` file, atomically, in the smallest
    integer type that holds ids below `vocab_size` (None: below the largest id + 1). Pass the
    vocabulary's size so that every split of a corpus gets the same type."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
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
    """Token ids saved by `save_ids` as a 1-D tensor of the file's integer type (uint8, uint16,
    int32; an int64 file from elsewhere as it is), memory-mapped: the pages are read when a
    batch touches them, and processes reading the same file share them. Batching
    (`lyricist.data.batching`) converts each batch to int64, what embeddings and one-hot expect;
    the whole split never is."""
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
    if array.dtype.type not in _TORCH_ID_DTYPES or not array.dtype.isnative:
        return torch.from_numpy(array.astype(np.int64))  # (N,) a rare type: one copy
    return torch.from_numpy(array)  # (N,)
