"""Held-out perplexity and samples of a trained checkpoint (the `evaluate` stage)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from lyricist.data.batching import check_enough_tokens, consecutive_batches
from lyricist.checkpoint import load_checkpoint
from lyricist.evaluation.dynamic import evaluate_dynamic
from lyricist.generate import generate
from lyricist.evaluation.interpolation import interpolate_with_ngram
from lyricist.models import RecurrentLM
from lyricist.evaluation.ngram import best_kneser_ney
from lyricist.data.vocab import load_ids


@torch.no_grad()
def perplexity(model: RecurrentLM, ids: torch.Tensor, batch_size: int, num_steps: int) -> float:
    """exp(mean cross-entropy) over a whole split read as `batch_size` consecutive streams,
    the state carried from batch to batch (so every prediction sees its full history)."""
    check_enough_tokens(len(ids), batch_size, num_steps, "evaluated split", sampling="consecutive")
    was_training = model.training
    model.eval()
    state, total, count = None, 0.0, 0
    for x, y in consecutive_batches(ids, batch_size, num_steps):
        logits, state = model(x, state)  # (B, T, V)
        total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                       reduction="sum"))  # (B*T, V)
        count += y.numel()
    model.train(was_training)
    return math.exp(total / count)


def evaluate_checkpoint(checkpoint: str | Path, data_dir: Path, batch_size: int, num_steps: int,
                        prefixes: list[str], num_chars: int, strategy: str = "greedy",
                        temperature: float = 1.0, top_k: int | None = None,
                        seed: int | None = 0, ngram_max_order: int | None = None,
                        ngram_discount_mode: str = "modified",
                        ngram_fixed_discount: float = 0.75, dynamic_lrs: Sequence[float] = (),
                        dynamic_num_steps: int | None = None) -> tuple[dict, str]:
    """Val (and test, when the split is not empty) perplexity, and a markdown page of samples.

    With `ngram_max_order`, also the perplexity of the neural model interpolated with the
    best Kneser-Ney model of orders 1..ngram_max_order fit on data_dir's train split, the
    weight chosen on val (`lyricist.evaluation.interpolation`): keys ngram_order, interpolation_weight,
    ngram_{val,test}_ppl and interpolated_{val,test}_ppl. With `dynamic_lrs` as well, dynamic
    evaluation (`lyricist.evaluation.dynamic`: the network learns from each segment of `dynamic_num_steps`
    tokens after scoring it, the rate chosen on val) against the adaptive Kneser-Ney model, alone
    and interpolated: keys dynamic_lr, dynamic_{split}_ppl, ngram_adaptive_{split}_ppl,
    dynamic_interpolation_weight, dynamic_interpolated_{split}_ppl.
    """
    if dynamic_lrs and ngram_max_order is None:
        raise ValueError("dynamic evaluation is compared with the adaptive n-gram model: "
                         "pass ngram_max_order too (the baseline's max_order), or no dynamic_lrs.")
    loaded = load_checkpoint(checkpoint)
    metrics: dict[str, float] = {}
    splits = {}
    for split in ("val", "test"):
        path = data_dir / f"{split}.npy"
        ids = load_ids(path) if path.is_file() else torch.empty(0, dtype=torch.long)
        if len(ids):
            splits[split] = ids
            metrics[f"{split}_ppl"] = perplexity(loaded.model, ids, batch_size, num_steps)
    metrics["epoch"] = loaded.meta.get("epoch")
    if ngram_max_order is not None:
        # The baseline stage's best n-gram: the order of 1..max_order best on val, fit on train.
        ngram, _ = best_kneser_ney(load_ids(data_dir / "train.npy"), splits.get("val", []), len(loaded.vocab),
                                   ngram_max_order, ngram_discount_mode, ngram_fixed_discount)
        metrics.update(interpolate_with_ngram(loaded.model, None, splits, len(loaded.vocab), batch_size,
                                              num_steps, ngram=ngram))
        if dynamic_lrs:
            metrics.update(evaluate_dynamic(loaded.model, ngram, splits, dynamic_num_steps or num_steps,
                                            dynamic_lrs))
    unit = "characters" if loaded.vocab.tokenizer == "char" else "words"
    lines = [f"# Samples ({strategy}, {num_chars} {unit})", ""]
    for prefix in prefixes:
        text = generate(loaded.model, loaded.vocab, prefix, num_chars, strategy, temperature,
                        top_k, seed, allow_unknown=True)
        lines += [f"## {prefix}", "", "```", text, "```", ""]
    return metrics, "\n".join(lines)
