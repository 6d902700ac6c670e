"""Where a network loses to the Kneser-Ney baseline: val's positions grouped by the longest
n-gram ending there that train holds verbatim, each group's perplexity under both; then the
network with a memory of train (a kNN-LM, Khandelwal et al., 2020), θ and λ chosen on val.

    .venv/bin/python benchmarks/kn_gap.py                          # models/checkpoints/best.ckpt on Jay Chou
    .venv/bin/python benchmarks/kn_gap.py --checkpoint outputs/seeds/<run>/seed_1000/checkpoints/best.ckpt

Both models are scored as the evaluate stage's cache row reads a split: one stream, state
carried, positions 1 .. len - 1; KN is the baseline stage's (order chosen on val, fit on train).
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

from lyricist.checkpoint import load_checkpoint
from lyricist.data.vocab import load_ids
from lyricist.evaluation.cache import pointer_log_probs, stream_states, with_cache
from lyricist.evaluation.interpolation import WEIGHT_GRID, choose_weight, mixture_log_probs, perplexity_of
from lyricist.errors import run_cli
from lyricist.evaluation.ngram import best_kneser_ney, ngram_token_log_probs
from lyricist.cli.config import read

LONGEST = 8  # n-grams of this many tokens or more form one group


def train_match(train: list[int], ids: list[int]) -> np.ndarray:
    """For positions 1 .. len - 1: the longest n (up to LONGEST) such that the n tokens ending
    there occur in train."""
    seen = [{tuple(train[i:i + n]) for i in range(len(train) - n + 1)} for n in range(LONGEST + 1)]
    match = np.zeros(len(ids) - 1, dtype=int)
    for p in range(1, len(ids)):
        n = 0
        while n < LONGEST and p - n >= 0 and tuple(ids[p - n:p + 1]) in seen[n + 1]:
            n += 1
        match[p - 1] = n
    return match


def memory_log_probs(hidden: torch.Tensor, targets: torch.Tensor, memory: torch.Tensor, next_ids: torch.Tensor,
                     theta: float, rows: int = 256) -> np.ndarray:
    """log p_memory of each target (N,): softmax over all train positions of θ h_t·h_i, summed over
    those followed by the target (-inf where none is)."""
    out = np.empty(len(targets))
    for a in range(0, len(targets), rows):
        scores = theta * hidden[a:a + rows] @ memory.T  # (r, N_train)
        out[a:a + rows] = pointer_log_probs(scores, next_ids, targets[a:a + rows]).numpy()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="models/checkpoints/best.ckpt")
    parser.add_argument("--data-dir", default="data/encoded/jaychou", help="train.npy, val.npy, test.npy")
    parser.add_argument("--params", default="params.yaml", help="its baseline section: the KN orders and discounts")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    b = read(args.params, "baseline")
    loaded = load_checkpoint(args.checkpoint)
    splits = {s: load_ids(f"{args.data_dir}/{s}.npy") for s in ("train", "val", "test")}
    kn, _ = best_kneser_ney(splits["train"], splits["val"], len(loaded.vocab), **b.model_dump())
    streams = {s: stream_states(loaded.model, splits[s]) for s in splits}  # (log p, hidden, targets)
    net = {s: streams[s][0] for s in ("val", "test")}
    counts = {s: ngram_token_log_probs(kn, splits[s], np.arange(1, len(splits[s]))) for s in ("val", "test")}

    match = train_match(splits["train"].tolist(), splits["val"].tolist())
    gap = (counts["val"] - net["val"]).sum()
    print(f"val: network {perplexity_of(net['val']):.1f}, KN{kn.order} {perplexity_of(counts['val']):.1f}")
    print("| longest train n-gram ending at the target | share of val | network ppl | KN ppl | share of the gap |")
    print("|---|---|---|---|---|")
    for n in range(LONGEST + 1):
        group = match == n
        if group.any():
            print(f"| {n}{'+' if n == LONGEST else ''} | {group.mean():.3f} | {perplexity_of(net['val'][group]):.1f} "
                  f"| {perplexity_of(counts['val'][group]):.1f} | {(counts['val'][group] - net['val'][group]).sum() / gap:+.2f} |")

    _, memory, next_ids = streams["train"]
    best = None  # (val ppl, θ, λ)
    for theta in (0.1, 0.2, 0.5, 1.0, 2.0, 3.0):
        recalled = memory_log_probs(streams["val"][1], streams["val"][2], memory, next_ids, theta)
        for lam in [i / 20 for i in range(20)]:
            ppl = perplexity_of(with_cache(net["val"], recalled, lam))
            best = min(best or (math.inf,), (ppl, theta, lam))
    _, theta, lam = best
    remembered = {}
    for s in ("val", "test"):
        remembered[s] = with_cache(net[s], memory_log_probs(streams[s][1], streams[s][2], memory, next_ids, theta), lam)
        print(f"{s}: network {perplexity_of(net[s]):.1f}, + memory of train (θ {theta:g}, λ {lam:g}) "
              f"{perplexity_of(remembered[s]):.1f}, KN{kn.order} {perplexity_of(counts[s]):.1f}")
    for name, scores in (("network", net), ("network + memory", remembered)):  # mixed with KN, weight on val
        weight, _ = choose_weight(scores["val"], counts["val"], WEIGHT_GRID)
        mixed = {s: perplexity_of(mixture_log_probs(scores[s], counts[s], weight)) for s in scores}
        print(f"{name} + KN{kn.order} (weight {weight:g} on val): val {mixed['val']:.1f}, test {mixed['test']:.1f}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
