"""The evaluate stage's numbers as small records. Their flat names ("ngram_val_ppl", ...) live
in `as_flat_dict` only: the keys of reports/metrics.json, hence the columns of `dvc metrics
show` and `dvc exp show`, so they and their order stay as they are."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Perplexities:
    """One model's perplexity on val and, when that split is not empty, on test."""

    val: float
    test: float | None = None


def _by_split(models: dict[str, Perplexities]) -> dict[str, float]:
    """{"<prefix><split>_ppl": ..} for {prefix: perplexities}: val's first, then test's."""
    return {f"{prefix}{split}_ppl": getattr(ppl, split) for split in ("val", "test")
            for prefix, ppl in models.items() if getattr(ppl, split) is not None}


@dataclass(frozen=True)
class InterpolationResult:
    """The network mixed with the val-best Kneser-Ney model: weight x neural + (1 - weight) x kn."""

    order: int  # of the Kneser-Ney model
    weight: float  # of the network, chosen on val
    ngram: Perplexities  # over the positions the network predicts
    interpolated: Perplexities

    def as_flat_dict(self) -> dict:
        return {"ngram_order": self.order, "interpolation_weight": self.weight,
                **_by_split({"ngram_": self.ngram, "interpolated_": self.interpolated})}


@dataclass(frozen=True)
class DynamicResult:
    """Dynamic evaluation against the adaptive Kneser-Ney model, alone and mixed."""

    lr: float  # of the step after each segment, chosen on val
    weight: float  # of the dynamic network in the mixture, chosen on val
    dynamic: Perplexities
    ngram_adaptive: Perplexities
    interpolated: Perplexities

    def as_flat_dict(self, prefix: str = "dynamic_", with_ngram: bool = True) -> dict:
        """`with_ngram`: the adaptive n-gram's too (the same for every update rule: stated once)."""
        return {f"{prefix}lr": self.lr, f"{prefix}interpolation_weight": self.weight,
                **_by_split({prefix: self.dynamic, **({"ngram_adaptive_": self.ngram_adaptive} if with_ngram else {}),
                             f"{prefix}interpolated_": self.interpolated})}


@dataclass(frozen=True)
class CacheResult:
    """The network with a neural cache, alone and mixed with the adaptive n-gram."""

    size: int  # positions the cache holds
    theta: float  # flatness, chosen on val
    lam: float  # weight of the cache, chosen on val
    weight: float  # of the cached network in the mixture with the adaptive n-gram, chosen on val
    cache: Perplexities
    ngram_adaptive: Perplexities  # over the same positions (1 .. len - 1 of each split)
    interpolated: Perplexities

    def as_flat_dict(self) -> dict:
        return {"cache_size": self.size, "cache_theta": self.theta, "cache_lambda": self.lam,
                "cache_interpolation_weight": self.weight,
                **_by_split({"cache_": self.cache, "cache_interpolated_": self.interpolated})}


@dataclass(frozen=True)
class LyricMetrics:
    """Texts measured as lyrics (lyrics.py): shares in [0, 1], lengths in characters."""

    copy_rate: float  # share of character 8-grams found verbatim in the train text
    repeated_lines: float  # share of lines equal to an earlier line of the same text
    distinct_1: float
    distinct_2: float
    line_length_mean: float
    line_length_std: float

    def as_flat_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{name}": getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class LyricsResult:
    """The default decoding's samples (all prefixes together) beside the human test text cut
    into pieces of the samples' length (None without a test split)."""

    samples: LyricMetrics
    human: LyricMetrics | None = None

    def as_flat_dict(self) -> dict:
        return {**self.samples.as_flat_dict("samples_"),
                **(self.human.as_flat_dict("human_test_") if self.human else {})}


@dataclass(frozen=True)
class EvaluationResult:
    """Everything the evaluate stage measures of one checkpoint: its rows (evaluate.py)."""

    neural: Perplexities
    epoch: int | None  # of the checkpoint
    interpolation: InterpolationResult | None = None
    dynamic: DynamicResult | None = None  # plain SGD updates
    krause: DynamicResult | None = None  # Krause et al.'s RMS-normalised updates with decay
    lyrics: LyricsResult | None = None
    cache: CacheResult | None = None  # one model's hidden states: no ensemble

    def as_flat_dict(self) -> dict:
        """The keys and values of reports/metrics.json, in its order."""
        return {**_by_split({"": self.neural}), "epoch": self.epoch,
                **(self.interpolation.as_flat_dict() if self.interpolation else {}),
                **(self.dynamic.as_flat_dict() if self.dynamic else {}),
                **(self.krause.as_flat_dict("krause_", with_ngram=not self.dynamic) if self.krause else {}),
                **(self.lyrics.as_flat_dict() if self.lyrics else {}),
                **(self.cache.as_flat_dict() if self.cache else {})}

    def to_json(self) -> str:
        return json.dumps(self.as_flat_dict(), indent=2) + "\n"
