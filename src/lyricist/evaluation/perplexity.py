"""Held-out perplexity and samples of a trained checkpoint (the `evaluate` stage)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Sequence

import torch

from lyricist.checkpoint import check_same_vocab, load_checkpoint
from lyricist.data.vocab import load_ids
from lyricist.evaluation.dynamic import adaptive_ngram_scores, evaluate_dynamic, gradient_rms
from lyricist.evaluation.interpolation import interpolate_with_ngram, neural_token_log_probs, perplexity_of
from lyricist.evaluation.metrics import EvaluationResult, Perplexities
from lyricist.evaluation.ngram import best_kneser_ney, load_kneser_ney
from lyricist.evaluation.progress import Progress
from lyricist.evaluation.samples import sample_lyrics
from lyricist.models import RecurrentLM
from lyricist.settings import BaselineSettings, Decoding, EvaluateSettings, Settings


def perplexity(model: RecurrentLM, ids: torch.Tensor, batch_size: int, num_steps: int) -> float:
    """exp(mean cross-entropy) over a whole split read as `batch_size` consecutive streams,
    the state carried from batch to batch (so every prediction sees its full history)."""
    return perplexity_of(neural_token_log_probs(model, ids, batch_size, num_steps)[1])


def evaluation_settings(s: Settings) -> dict:
    """`evaluate_checkpoint`'s settings from a composition: the evaluate stage's params (dvc.yaml)."""
    return dict(batch_size=s.train.eval_batch_size, num_steps=s.data.num_steps, prefixes=list(s.data.prefixes),
                decoding=s.generate, baseline=s.baseline, evaluate=s.evaluate)


def evaluate_checkpoint(checkpoint: str | Path | Sequence[str | Path], data_dir: Path, batch_size: int,
                        num_steps: int, prefixes: list[str], decoding: Decoding,
                        baseline: BaselineSettings | None = None, evaluate: EvaluateSettings | None = None,
                        ngram_path: str | Path | None = None,
                        report: Callable[[str], None] = lambda line: None) -> tuple[EvaluationResult, str]:
    """Val (and test, when the split is not empty) perplexity, and a markdown page of samples, of
    a checkpoint or of the ensemble of several (lyricist.checkpoint.load_checkpoint): greedy
    beside `decoding`, measured as lyrics (`lyrics`, lyricist.evaluation.samples).

    With `baseline`, also the network mixed with the val-best Kneser-Ney model of orders
    1..max_order (`interpolation`): the baseline stage's from `ngram_path` (refused unless
    fit with these settings and vocabulary), else fit here on train. With `evaluate.dynamic_lrs`
    too, dynamic evaluation on segments of `dynamic_num_steps` tokens (`dynamic`), its rate chosen
    on the first `dynamic_tune_tokens` of val; with `krause_lrs`, the same with Krause et al.'s
    update (`krause`), normalised by gradients on the first `krause_stat_tokens` of train. `report`
    gets one line per part, with its time, and inside a long part a line every 30 s
    (lyricist.evaluation.progress).
    """
    e = evaluate or EvaluateSettings(dynamic_lrs=[], dynamic_num_steps=num_steps, dynamic_tune_tokens=None,
                                     krause_lrs=[], krause_decay=0.0, krause_eps=1e-3, krause_stat_tokens=None,
                                     cache_size=None, cache_thetas=[])
    dynamic_lrs, krause_lrs, dynamic_tune_tokens = e.dynamic_lrs, e.krause_lrs, e.dynamic_tune_tokens
    num_chars = decoding.num_chars
    assert baseline is not None or not (dynamic_lrs or krause_lrs or ngram_path), "the n-gram needs its settings"
    loaded = load_checkpoint(checkpoint)
    check_same_vocab(loaded, checkpoint, data_dir)  # before any scoring: other ids would score as nonsense
    splits = {"val": load_ids(data_dir / "val.npy")}  # training needs val: it is there
    test_path = data_dir / "test.npy"
    if test_path.is_file() and len(test_ids := load_ids(test_path)):
        splits["test"] = test_ids
    clock = time.perf_counter()
    progress = Progress(report)  # inside a long part: a line every 30 s

    def done(part: str) -> None:
        nonlocal clock
        report(f"  {part}: {time.perf_counter() - clock:.1f} s")
        clock = time.perf_counter()

    # Scored once: the static perplexity and the interpolation read the same per-token numbers.
    scores = {split: neural_token_log_probs(loaded.model, ids, batch_size, num_steps) for split, ids in splits.items()}
    neural = Perplexities.of_splits({split: perplexity_of(log_p) for split, (_, log_p) in scores.items()})
    done(f"static perplexity ({', '.join(f'{s} {len(ids):,} tokens' for s, ids in splits.items())})")
    interpolation = dynamic = krause = None
    train_ids = load_ids(data_dir / "train.npy")  # the n-gram's fit, the Krause statistics, the copy rate
    segment = e.dynamic_num_steps
    if baseline is not None:
        ngram_max_order, ngram_discount_mode = baseline.max_order, baseline.discount_mode
        ngram_fixed_discount = baseline.fixed_discount
        vocab_size = len(loaded.vocab)
        if ngram_path is not None:
            ngram = load_kneser_ney(ngram_path, vocab_size, ngram_max_order, ngram_discount_mode,
                                    ngram_fixed_discount)
        else:  # as the baseline stage picks it: the order of 1..max_order best on val, fit on train
            ngram, _ = best_kneser_ney(train_ids, splits["val"], vocab_size,
                                       ngram_max_order, ngram_discount_mode, ngram_fixed_discount)
        interpolation = interpolate_with_ngram(loaded.model, None, splits, vocab_size, batch_size,
                                               num_steps, ngram=ngram, neural=scores)
        done(f"kn{ngram.order} and the interpolation")
        if dynamic_lrs or krause_lrs:  # the adaptive n-gram is the same beside either rule: scored once
            adaptive = adaptive_ngram_scores(ngram, splits, segment, progress)
            done(f"adaptive kn{ngram.order}")
        if dynamic_lrs:
            dynamic = evaluate_dynamic(loaded.model, ngram, splits, segment, dynamic_lrs,
                                       tune_tokens=dynamic_tune_tokens, adaptive=adaptive, progress=progress)
            done(f"dynamic evaluation (rate {dynamic.lr:g} of 0 and {list(dynamic_lrs)})")
        if krause_lrs:
            rms = gradient_rms(loaded.model, train_ids, segment, batch_size, e.krause_stat_tokens)
            krause = evaluate_dynamic(loaded.model, ngram, splits, segment, krause_lrs,
                                      tune_tokens=dynamic_tune_tokens, rms=rms, decay=e.krause_decay, eps=e.krause_eps,
                                      adaptive=adaptive, progress=progress)
            done(f"Krause dynamic evaluation (rate {krause.lr:g} of 0 and {list(krause_lrs)})")
    lyrics, samples_md = sample_lyrics(loaded.model, loaded.vocab, prefixes, decoding, train_ids, splits.get("test"))
    unit = "characters" if loaded.vocab.tokenizer == "char" else "words"
    done(f"samples and their lyric metrics ({len(prefixes)} x 2 x {num_chars} {unit})")
    return (EvaluationResult(neural, loaded.meta.get("epoch"), interpolation, dynamic, krause, lyrics),
            samples_md)
