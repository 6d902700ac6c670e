"""Character vocabulary: one token per Unicode code point, index 0 reserved for "<unk>".

A Chinese character is one token (never its UTF-8 bytes), as in the seeds. This module knows
nothing of models; it only maps text <-> integer ids and stores both on disk.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from lyricist.corpus import atomic_write_bytes

UNK_TOKEN = "<unk>"
VOCAB_FORMAT = "lyricist-char-vocab"
VOCAB_VERSION = 1


class VocabError(ValueError):
    """A vocabulary or id file on disk is malformed."""


class Vocab:
    """Maps characters to ids and back.

    `itos[i]` is the token with id i; `itos[0]` is always "<unk>", the id of every character
    the vocabulary does not know (unseen, or rarer than `min_freq` when it was built).
    """

    def __init__(self, itos: list[str], counts: dict[str, int] | None = None) -> None:
        if not itos or itos[0] != UNK_TOKEN:
            raise VocabError(f"itos must start with {UNK_TOKEN!r} at index 0, got {itos[:3]!r}...")
        if len(set(itos)) != len(itos):
            duplicates = sorted({token for token in itos if itos.count(token) > 1})
            raise VocabError(f"itos lists tokens more than once: {duplicates!r}; every token needs one id.")
        for token in itos[1:]:
            if not isinstance(token, str) or len(token) != 1:
                raise VocabError(f"every token after {UNK_TOKEN!r} must be one character, got {token!r}.")
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {token: index for index, token in enumerate(self.itos)}
        self.counts: dict[str, int] = dict(counts or {})
        self.unk_index: int = 0

    @classmethod
    def build(cls, text: str, min_freq: int = 1) -> Vocab:
        """Vocabulary of the characters of `text` seen at least `min_freq` times.

        Order: most frequent first, ties by code point, so the same text always gives the same
        ids (the MXNet seed's `list(set(...))` changes order between runs).
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}.")
        counts = Counter(text)
        kept = [char for char, count in counts.items() if count >= min_freq]
        kept.sort(key=lambda char: (-counts[char], ord(char)))
        # `counts` keeps every character, including those left out, so a report can say what
        # min_freq dropped.
        ordered_counts = {char: counts[char] for char in sorted(counts, key=lambda c: (-counts[c], ord(c)))}
        return cls([UNK_TOKEN, *kept], ordered_counts)

    # -- lookups -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.itos == other.itos

    __hash__ = None  # mutable lists inside; equal vocabularies need not share a hash

    def __repr__(self) -> str:
        preview = "".join(self.itos[1:21])
        return f"Vocab(size={len(self)}, first tokens={preview!r})"

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text`; characters not in the vocabulary become `unk_index`."""
        return [self.stoi.get(char, self.unk_index) for char in text]

    def decode(self, ids: Iterable[int], unk: str = UNK_TOKEN) -> str:
        """Text of `ids` (a list, numpy array or tensor of ints).

        `unk_index` decodes to `unk`: "<unk>" by default, so a generated sample shows plainly
        where the model chose the unknown token; pass unk="" to drop it or unk="\\ufffd" to
        keep one character per id.
        """
        size = len(self.itos)
        chars = []
        for raw_id in ids:
            index = int(raw_id)
            if not 0 <= index < size:
                raise IndexError(
                    f"id {index} is outside the vocabulary (0..{size - 1}); the ids were made with a "
                    f"different vocabulary or model output size."
                )
            chars.append(unk if index == self.unk_index else self.itos[index])
        return "".join(chars)

    def unknown_chars(self, text: str) -> list[str]:
        """Distinct characters of `text` that would encode to `<unk>`, in order of appearance."""
        return list(dict.fromkeys(char for char in text if char not in self.stoi))

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "unk_token": UNK_TOKEN,
            "itos": self.itos,
            "counts": self.counts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocab:
        if not isinstance(data, dict):
            raise VocabError(f"a vocabulary must be a JSON object, got {type(data).__name__}.")
        if data.get("format") != VOCAB_FORMAT or data.get("version") != VOCAB_VERSION:
            raise VocabError(
                f"expected format={VOCAB_FORMAT!r} version={VOCAB_VERSION}, "
                f"got format={data.get('format')!r} version={data.get('version')!r}."
            )
        itos, counts = data.get("itos"), data.get("counts", {})
        if not isinstance(itos, list) or not all(isinstance(token, str) for token in itos):
            raise VocabError("'itos' must be a list of strings.")
        if not isinstance(counts, dict) or not all(isinstance(n, int) for n in counts.values()):
            raise VocabError("'counts' must map characters to integers.")
        return cls(itos, counts)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as human-readable UTF-8 JSON (Chinese stays Chinese), atomically."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"vocabulary file {path} does not exist; build it with `dvc repro` (the vocab stage) "
                f"or fetch it with `dvc pull`."
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_dict(data)
        except (UnicodeDecodeError, json.JSONDecodeError, VocabError) as err:
            raise VocabError(
                f"vocabulary file {path} is malformed ({err}). Delete it and rebuild it with `dvc repro`."
            ) from err


# ---------------------------------------------------------------------------------------------
# token-id arrays on disk


def encode_to_array(vocab: Vocab, text: str) -> np.ndarray:
    """Ids of `text` as a 1-D int32 array (int32 halves the file size; vocabularies are tiny)."""
    return np.asarray(vocab.encode(text), dtype=np.int32)  # (N,)


def save_ids(path: str | Path, ids: np.ndarray | torch.Tensor | list[int]) -> None:
    """Save a 1-D array of non-negative token ids as an int32 `.npy` file, atomically."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}.")
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int32).max):
        raise ValueError(f"ids must lie in [0, 2**31), got min {array.min()} max {array.max()}.")
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.int32), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def load_ids(path: str | Path) -> torch.Tensor:
    """Load token ids saved by `save_ids` as a 1-D int64 tensor (what embedding/one-hot expect)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"token-id file {path} does not exist; build it with `dvc repro` (the vocab stage) "
            f"or fetch it with `dvc pull`."
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise VocabError(f"token-id file {path} is not a readable .npy file ({err}). Rebuild it with `dvc repro`.") from err
    if not isinstance(array, np.ndarray) or array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise VocabError(
            f"token-id file {path} should hold a 1-D integer array, got shape {getattr(array, 'shape', '?')} "
            f"dtype {getattr(array, 'dtype', '?')}. Rebuild it with `dvc repro`."
        )
    return torch.from_numpy(array.astype(np.int64))  # (N,)
