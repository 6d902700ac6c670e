"""Count-based baselines over token ids, the held-out perplexity a network has to beat on the
same splits and vocabulary: add-one unigram and interpolated Kneser-Ney n-grams (`<unk>` is id
0, never in train: its probability comes from smoothing alone).

Kneser-Ney is the interpolated, modified form of Chen & Goodman (1998): for an n-gram model,

    P_k(w | h) = (c_k(hw) - D_k(c_k(hw))) / c_k(h.) + gamma_k(h) * P_{k-1}(w | h minus its first token)
    gamma_k(h) = (D_k1 * N1(h.) + D_k2 * N2(h.) + D_k3+ * N3+(h.)) / c_k(h.)
    P_0(w)     = 1 / vocab_size

where c_k is the raw count for the top order k = n and the continuation count N1+(. h w) (how
many distinct tokens precede h w) for lower orders, N_r(h.) counts the tokens that follow h
exactly r (r >= 3: at least 3) times, and a context never seen leaves P_k = P_{k-1}.
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
import zipfile
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lyricist.data.corpus import atomic_write_bytes
from lyricist.evaluation.ppl import perplexity as ppl
from lyricist.evaluation.progress import Tick

FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM's defaults for --discount_fallback
KNESER_NEY_FORMAT = 1  # of the file the baseline stage saves and the evaluate stage loads


def _as_id_list(ids: Sequence[int], vocab_size: int) -> list[int]:
    """`ids` (list, numpy array or CPU tensor) as plain ints, every one a valid id."""
    array = np.asarray(ids, dtype=np.int64).ravel()
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got min {array.min()} max {array.max()}.")
    return array.tolist()  # python ints: tuples of them hash fast as dict keys


class AddOneUnigram:
    """P(w) = (count(w) + 1) / (N + vocab_size): the simplest model that gives every token a chance."""

    order = 1

    def fit(self, ids: Sequence[int], vocab_size: int) -> AddOneUnigram:
        counts = np.bincount(_as_id_list(ids, vocab_size), minlength=vocab_size)  # (V,)
        self.vocab_size = vocab_size
        self.probs = (counts + 1) / (counts.sum() + vocab_size)  # (V,)
        return self

    def prob(self, context: Sequence[int], token: int) -> float:
        return float(self.probs[token])


def estimate_discounts(counts: Sequence[int], mode: str = "modified",
                       fixed_discount: float = 0.75) -> tuple[float, float, float]:
    """(D1, D2, D3+) for n-grams seen once, twice, three or more times, from their counts:
    "modified", Chen & Goodman's Y = n1 / (n1 + 2 n2), D_r = r - (r + 1) Y n_{r+1} / n_r from the
    count-of-counts n1..n4; "single", Ney's one Y; "fixed", `fixed_discount`. Where the counts give
    no estimate in (0, r] (tiny corpora), FALLBACK_DISCOUNTS, like KenLM's --discount_fallback: a
    discount of 0 would leave no mass for the lower orders."""
    if mode == "fixed":
        return (fixed_discount,) * 3
    count_of_counts = Counter(c for c in counts if c <= 4)
    n1, n2, n3, n4 = (count_of_counts[r] for r in (1, 2, 3, 4))
    if mode == "single":
        return (n1 / (n1 + 2 * n2),) * 3 if n1 and n2 else (FALLBACK_DISCOUNTS[0],) * 3
    if not (n1 and n2 and n3 and n4):
        return FALLBACK_DISCOUNTS
    y = n1 / (n1 + 2 * n2)
    discounts = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    return discounts if all(0.0 < d <= r for r, d in enumerate(discounts, start=1)) else FALLBACK_DISCOUNTS


class _Level:
    """The counts of one order k: k-grams, and per context (the first k-1 tokens) c(h.) and the sum
    of the discounts of its followers (gamma(h) is their ratio; a context with no entry was never
    seen at this order), summed in the counts' order: a level rebuilt from saved counts holds bit
    for bit the same floats."""

    def __init__(self, counts: dict[tuple[int, ...], int], discounts: tuple[float, float, float]) -> None:
        self.counts, self.discounts = counts, discounts
        totals: Counter = Counter()
        masses: Counter = Counter()
        for gram, count in counts.items():
            totals[gram[:-1]] += count
            masses[gram[:-1]] += self.discount(count)
        self.contexts = {h: (total, masses[h]) for h, total in totals.items()}

    def discount(self, count: int) -> float:
        return self.discounts[min(count, 3) - 1]

    def add(self, gram: tuple[int, ...]) -> None:
        """One more occurrence of `gram`, the context's total and discount mass kept in step."""
        old = self.counts.get(gram, 0)
        self.counts[gram] = old + 1
        context = gram[:-1]
        total, mass = self.contexts.get(context, (0, 0.0))
        self.contexts[context] = (total + 1, mass + self.discount(old + 1) - (self.discount(old) if old else 0.0))


class KneserNey:
    """Interpolated Kneser-Ney n-gram model of `order` (1 = unigram) over token ids."""

    def __init__(self, order: int = 3, discount_mode: str = "modified", fixed_discount: float = 0.75) -> None:
        self.order, self.discount_mode, self.fixed_discount = order, discount_mode, fixed_discount

    def fit(self, ids: Sequence[int], vocab_size: int) -> KneserNey:
        ids = _as_id_list(ids, vocab_size)
        self.vocab_size = vocab_size
        # islice, not ids[i:]: a slice would copy the list (8 bytes a token) k times per order.
        raw = {k: Counter(zip(*(islice(ids, i, None) for i in range(k)))) for k in range(1, self.order + 1)}
        self.levels: list[_Level] = []  # levels[k - 1] holds order k
        for k in range(1, self.order + 1):
            # Below the top order, the continuation count of a k-gram: how many distinct tokens
            # precede it, i.e. how many (k+1)-gram types it ends. A lower order is only consulted
            # when the longer context says little, so it should favour tokens seen after many contexts.
            counts = dict(raw[k] if k == self.order else Counter(gram[1:] for gram in raw[k + 1]))
            discounts = estimate_discounts(counts.values(), self.discount_mode, self.fixed_discount)
            self.levels.append(_Level(counts, discounts))
        # The k-gram types seen (k >= 2): `observe` needs them to tell when a continuation count grows.
        self._seen = {k: set(raw[k]) for k in range(2, self.order + 1)}
        return self

    def observe(self, ids: Sequence[int], context: Sequence[int] = ()) -> KneserNey:
        """Count the n-grams of `ids`, read after `context`, as if they had been in the training text
        (the discounts stay): fitting on A, then observing B after A, fits A + B (exactly, for fixed
        discounts). The adaptive n-gram of dynamic evaluation."""
        context = _as_id_list(context, self.vocab_size)[-(self.order - 1):] if self.order > 1 else []
        stream = context + _as_id_list(ids, self.vocab_size)
        for i in range(len(context), len(stream)):
            for k in range(1, min(self.order, i + 1) + 1):
                gram = tuple(stream[i - k + 1 : i + 1])
                if k == self.order:
                    self.levels[k - 1].add(gram)  # the top order counts occurrences
                if k >= 2 and gram not in self._seen[k]:
                    # A new k-gram type (v, g): one more distinct token precedes g = gram[1:],
                    # so g's continuation count (order k - 1) grows.
                    self._seen[k].add(gram)
                    self.levels[k - 2].add(gram[1:])
        return self

    def prob(self, context: Sequence[int], token: int) -> float:
        context = tuple(int(t) for t in context)
        history = context[max(0, len(context) - self.order + 1):]
        p = 1.0 / self.vocab_size
        for k in range(1, len(history) + 2):  # from the unigram up; a context unseen at order k leaves p
            level, h = self.levels[k - 1], history[len(history) - k + 1:]
            if h in level.contexts:
                total, mass = level.contexts[h]
                count = level.counts.get(h + (token,), 0)
                p = mass / total * p + ((count - level.discount(count)) / total if count else 0.0)
        return p


def save_kneser_ney(model: KneserNey, path: str | Path, max_order: int) -> None:
    """Write a fitted model to `path` atomically, a .npz of plain arrays (no pickle): its settings
    (`max_order`: the orders it was chosen among), per order its k-grams in fitting order, counts and
    discounts, and the types `observe` needs; loading recomputes the rest as `fit`: bit for bit."""
    meta = {"format": KNESER_NEY_FORMAT, "order": model.order, "discount_mode": model.discount_mode,
            "fixed_discount": model.fixed_discount, "vocab_size": model.vocab_size, "max_order": max_order}
    arrays = {"meta": np.array(json.dumps(meta))}
    for k, level in enumerate(model.levels, start=1):
        arrays[f"grams_{k}"] = np.array(list(level.counts), dtype=np.int32).reshape(-1, k)  # (N_k, k)
        arrays[f"counts_{k}"] = np.array(list(level.counts.values()), dtype=np.int64)  # (N_k,)
        arrays[f"discounts_{k}"] = np.array(level.discounts, dtype=np.float64)  # (3,)
    for k in range(2, model.order):  # the top order's types are its counts' keys: not stored twice
        arrays[f"seen_{k}"] = np.array(sorted(model._seen[k]), dtype=np.int32).reshape(-1, k)  # (M_k, k)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_kneser_ney(path: str | Path, vocab_size: int, max_order: int, discount_mode: str,
                    fixed_discount: float) -> KneserNey:
    """The model `save_kneser_ney` wrote, refused with the fix unless it was chosen among orders
    1..max_order with these discount settings over a vocabulary of `vocab_size` tokens."""
    path = Path(path)
    fix = f"run `dvc repro baseline` to fit it again and rewrite {path}"
    if not path.is_file():
        raise FileNotFoundError(f"no Kneser-Ney model at {path}; {fix}.")
    try:
        with np.load(path, allow_pickle=False) as file:
            arrays = dict(file)
        meta = json.loads(str(arrays["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a Kneser-Ney model file ({err}); {fix}.") from err
    if meta.get("format") != KNESER_NEY_FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}, this code reads {KNESER_NEY_FORMAT}; {fix}.")
    asked = {"vocab_size": vocab_size, "max_order": max_order, "discount_mode": discount_mode,
             "fixed_discount": fixed_discount}
    differ = [f"{key}: fit with {meta[key]!r}, asked {value!r}" for key, value in asked.items() if meta[key] != value]
    if differ:
        raise ValueError(f"the Kneser-Ney model {path} does not match ({'; '.join(differ)}); {fix}.")
    model = KneserNey(meta["order"], meta["discount_mode"], meta["fixed_discount"])
    model.vocab_size = meta["vocab_size"]
    model.levels = []
    for k in range(1, model.order + 1):
        grams = map(tuple, arrays[f"grams_{k}"].tolist())  # python ints, as fit's keys
        counts = dict(zip(grams, arrays[f"counts_{k}"].tolist()))
        model.levels.append(_Level(counts, tuple(arrays[f"discounts_{k}"].tolist())))
    model._seen = {k: set(map(tuple, arrays[f"seen_{k}"].tolist())) for k in range(2, model.order)}
    if model.order >= 2:
        model._seen[model.order] = set(model.levels[-1].counts)
    return model


def perplexity(model: KneserNey | AddOneUnigram, ids: Sequence[int], context: Sequence[int] = ()) -> float:
    """exp(mean negative log-likelihood) of `ids`, each token predicted from what precedes it: with no
    `context` the first token is not predicted (as in the network's evaluation), with one every token is."""
    context, ids = (np.asarray(part, dtype=np.int64).ravel() for part in (context, ids))
    log_probs = ngram_token_log_probs(model, np.concatenate([context, ids]),
                                      range(len(context) or 1, len(context) + len(ids)))
    if not len(log_probs):
        raise ValueError(f"nothing to predict: {len(ids)} token(s) and {len(context)} of context.")
    return ppl(-sum(log_probs.tolist()) / len(log_probs))


def ngram_token_log_probs(model: KneserNey | AddOneUnigram, ids: Sequence[int], positions: Sequence[int],
                          adaptive: bool = False, progress: Tick | None = None, label: str = "") -> np.ndarray:
    """log p of the token at each of `positions` (ascending) of `ids`, given the order - 1 tokens
    before it there. `adaptive`: by a copy of `model` that counts every token once read (predict,
    then observe), the adaptive n-gram of dynamic evaluation; `progress` hears every 1,000 tokens."""
    ids = np.asarray(ids, dtype=np.int64).ravel().tolist()
    positions = np.asarray(positions).tolist()
    reader = copy.deepcopy(model) if adaptive else model  # the caller's model keeps its counts
    history, wanted = model.order - 1, set(positions)
    end = positions[-1] + 1 if positions else 0
    log_probs = []
    for p in range(end) if adaptive else positions:  # the adaptive reader counts every token it reads
        context = ids[max(0, p - history):p]
        if p in wanted:
            log_probs.append(math.log(reader.prob(context, ids[p])))
        if adaptive:
            reader.observe([ids[p]], context=context)
        if progress is not None and p % 1000 == 999:
            progress(label, p + 1, end)
    return np.array(log_probs, dtype=np.float64)


def adaptive_ngram_scores(ngram: KneserNey, splits: dict[str, Sequence[int]], num_steps: int = 1,
                          progress: Tick | None = None) -> dict[str, np.ndarray]:
    """Per split, the adaptive n-gram's log p at positions 1 .. num_steps * ((len - 1) // num_steps)
    (with `num_steps` 1: every position), scored once for every row that mixes with it."""
    return {split: ngram_token_log_probs(ngram, ids, range(1, (len(ids) - 1) // num_steps * num_steps + 1),
                                         adaptive=True, progress=progress, label=f"adaptive kn{ngram.order} on {split}")
            for split, ids in splits.items()}


def best_kneser_ney(train_ids: Sequence[int], val_ids: Sequence[int], vocab_size: int, max_order: int,
                    **discounts) -> tuple[KneserNey, float]:
    """(the Kneser-Ney model of order 1..max_order fit on train with the lowest val perplexity, that perplexity)."""
    metrics, model = evaluate_baselines(train_ids, {"val": val_ids}, vocab_size, max_order, **discounts)
    return model, metrics[f"kn{model.order}"]["val_ppl"]


def evaluate_baselines(train_ids: Sequence[int], splits: dict[str, Sequence[int]], vocab_size: int, max_order: int,
                       report: Callable[[str], None] = lambda line: None, **discounts) -> tuple[dict, KneserNey | None]:
    """({"unigram": {"val_ppl": .., "test_ppl": ..}, "kn1": {..}, ..., "best": {"name": .., ...}},
    the Kneser-Ney model best on val (None and no "best" without val)): the add-one unigram and
    Kneser-Ney orders 1..max_order on each split of >= 2 tokens. `report` hears each model's times."""
    scored = {split: part for split, part in splits.items() if len(part) >= 2}
    metrics: dict = {}
    best: KneserNey | None = None
    for order in range(max_order + 1):  # 0: the add-one unigram
        clock = time.perf_counter()
        model = (KneserNey(order, **discounts) if order else AddOneUnigram()).fit(train_ids, vocab_size)
        fitted = time.perf_counter()
        name = f"kn{order}" if order else "unigram"
        metrics[name] = {f"{split}_ppl": perplexity(model, part) for split, part in scored.items()}
        report(f"  {name}: fit {fitted - clock:.1f} s, scored {', '.join(scored) or 'nothing'} "
               f"{time.perf_counter() - fitted:.1f} s")
        val = metrics[name].get("val_ppl")
        if order and val is not None and (best is None or val < metrics[f"kn{best.order}"]["val_ppl"]):
            best = model  # ties: the lower order stays
    if "val" in scored:
        name = min(metrics, key=lambda name: metrics[name]["val_ppl"])  # ties: the first
        metrics["best"] = {"name": name, **metrics[name]}
    return metrics, best
