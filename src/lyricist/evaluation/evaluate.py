"""The one evaluator of a checkpoint, or of the ensemble of several (the evaluate stage's and
`lyricist.seeds`'): the model, the splits and the Kneser-Ney model loaded once (`Evaluation`),
then the rows of ROWS in order, each naming its numbers (`Row`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from lyricist.checkpoint import check_same_vocab, load_checkpoint
from lyricist.data.vocab import load_ids
from lyricist.evaluation.cache import evaluate_cache
from lyricist.evaluation.dynamic import evaluate_dynamic, gradient_rms
from lyricist.evaluation.interpolation import interpolate_with_ngram, neural_token_log_probs, perplexity_of
from lyricist.evaluation.metrics import EvaluationResult, Perplexities
from lyricist.evaluation.ngram import adaptive_ngram_scores, best_kneser_ney, load_kneser_ney
from lyricist.evaluation.progress import Progress
from lyricist.evaluation.samples import sample_lyrics
from lyricist.models import RecurrentLM
from lyricist.settings import BaselineSettings, Decoding, EvaluateSettings, Settings


def evaluation_settings(s: Settings) -> dict:
    """`evaluate_checkpoint`'s settings from a composition: the evaluate stage's params (dvc.yaml)."""
    return dict(batch_size=s.train.eval_batch_size, num_steps=s.data.num_steps, prefixes=list(s.data.prefixes),
                decoding=s.generate, baseline=s.baseline, evaluate=s.evaluate)


@dataclass
class Evaluation:
    """What the rows read. `baseline`: the n-gram rows (with `evaluate`, the dynamic, Krause and
    cache rows too) with the baseline stage's Kneser-Ney model from `ngram_path`, else one fit
    here as that stage fits it. `report` gets one line per row, with its time, and inside a long
    row a line every 30 s."""

    checkpoint: str | Path | Sequence[str | Path]
    data_dir: Path
    batch_size: int
    num_steps: int
    prefixes: list[str]
    decoding: Decoding
    baseline: BaselineSettings | None = None
    evaluate: EvaluateSettings | None = None
    ngram_path: str | Path | None = None
    report: Callable[[str], None] = lambda line: None
    scores: dict = field(init=False, default_factory=dict)  # the network's per-token log p: static, interpolation
    samples_md: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.loaded = load_checkpoint(self.checkpoint)
        self.model, self.vocab = self.loaded.model, self.loaded.vocab
        data = Path(self.data_dir)
        check_same_vocab(self.loaded, self.checkpoint, data)  # before any scoring: other ids would score as nonsense
        self.splits = {"val": load_ids(data / "val.npy")}  # training needs val: it is there
        if (data / "test.npy").is_file() and len(test := load_ids(data / "test.npy")):
            self.splits["test"] = test
        self.train_ids = load_ids(data / "train.npy")  # the n-gram's fit, the Krause statistics, the copy rate
        self.clock, self.progress = time.perf_counter(), Progress(self.report)
        self.ngram = None
        if self.baseline is not None:
            kn = self.baseline.model_dump()  # max_order and the discounts
            self.ngram = (load_kneser_ney(self.ngram_path, len(self.vocab), **kn) if self.ngram_path is not None
                          else best_kneser_ney(self.train_ids, self.splits["val"], len(self.vocab), **kn)[0])
            self.done(f"kn{self.ngram.order} {'loaded' if self.ngram_path is not None else 'fit on train'}")

    def done(self, part: str) -> None:
        self.report(f"  {part}: {time.perf_counter() - self.clock:.1f} s")
        self.clock = time.perf_counter()

    @cached_property
    def adaptive(self) -> dict:
        scores = adaptive_ngram_scores(self.ngram, self.splits, progress=self.progress)
        self.done(f"adaptive kn{self.ngram.order}")
        return scores


def static(e: Evaluation) -> Perplexities:
    e.scores = {split: neural_token_log_probs(e.model, ids, e.batch_size, e.num_steps) for split, ids in e.splits.items()}
    e.done(f"static perplexity ({', '.join(f'{s} {len(ids):,} tokens' for s, ids in e.splits.items())})")
    return Perplexities(**{split: perplexity_of(log_p) for split, (_, log_p) in e.scores.items()})


def interpolation(e: Evaluation):
    if e.ngram is None:
        return None
    result = interpolate_with_ngram(e.model, e.splits, e.ngram, e.batch_size, e.num_steps, neural=e.scores)
    e.done(f"kn{e.ngram.order} and the interpolation")
    return result


def dynamic(e: Evaluation, krause: bool = False):
    s = e.evaluate
    lrs = (s.krause_lrs if krause else s.dynamic_lrs) if s is not None and e.ngram is not None else []
    if not lrs:
        return None
    T = s.dynamic_num_steps
    rule = dict(rms=gradient_rms(e.model, e.train_ids, T, e.batch_size, s.krause_stat_tokens),
                decay=s.krause_decay, eps=s.krause_eps) if krause else {}
    result = evaluate_dynamic(e.model, e.ngram, e.splits, T, lrs, tune_tokens=s.dynamic_tune_tokens,
                              adaptive=e.adaptive, progress=e.progress, **rule)
    e.done(f"{'Krause dynamic' if krause else 'dynamic'} evaluation (rate {result.lr:g} of 0 and {list(lrs)})")
    return result


def lyrics(e: Evaluation):
    result, e.samples_md = sample_lyrics(e.model, e.vocab, e.prefixes, e.decoding, e.train_ids, e.splits.get("test"))
    unit = "characters" if e.vocab.tokenizer == "char" else "words"
    e.done(f"samples and their lyric metrics ({len(e.prefixes)} x 2 x {e.decoding.num_chars} {unit})")
    return result


def cache(e: Evaluation):
    s = e.evaluate
    if s is None or not s.cache_size or e.ngram is None or not isinstance(e.model, RecurrentLM):
        return None  # (an ensemble has no one hidden state)
    result = evaluate_cache(e.model, e.splits, s.cache_size, e.ngram, s.cache_thetas, adaptive=e.adaptive)
    e.done(f"neural cache (θ {result.theta:g}, λ {result.lam:g} of {result.size} positions)")
    return result


@dataclass(frozen=True)
class Row:
    """One part of the evaluation: EvaluationResult's `field`, computed by `run` (None: not asked
    for); its perplexities as (label in the stage's summary, title in seeds' table, key prefix in
    reports/metrics.json); the MLflow names of its keys ({key prefix: name prefix}, the longest
    that fits); what the summary says of it."""

    field: str
    run: Callable[[Evaluation], Any]
    lines: list[tuple[str, str, str]]
    mlflow: dict[str, str]
    note: Callable[[Any], str] | None = None


ROWS = [
    Row("neural", static, [("neural", "network", "")], {"": "eval/", "test_": "test/"}),
    Row("interpolation", interpolation,
        [("kn{ngram_order}", "KN (same split)", "ngram_"), ("interpolated", "network + KN", "interpolated_")],
        {"ngram_": "kn/", "interpolation_": "mixed/", "interpolated_": "mixed/"},
        lambda r: f"(interpolated: {r.weight:g} x neural + {1 - r.weight:g} x kn{r.order}, weight chosen on val; "
                  "kn over the positions the network predicts)"),
    Row("dynamic", dynamic,
        [("dynamic", "dynamic (SGD)", "dynamic_"), ("kn{ngram_order} adaptive", "adaptive KN", "ngram_adaptive_"),
         ("dynamic+kn", "dynamic (SGD) + adaptive KN", "dynamic_interpolated_")],
        {"dynamic_": "dynamic/", "dynamic_interpolation_": "dynamic/mixed_", "dynamic_interpolated_": "dynamic/mixed_",
         "ngram_adaptive_": "kn_adaptive/"},
        lambda r: f"(dynamic: one SGD step at lr {r.lr:g} after each segment, the n-gram counting each token once "
                  f"read; mixed {r.weight:g} x dynamic, both chosen on val)"),
    Row("krause", partial(dynamic, krause=True),
        [("krause", "dynamic (Krause)", "krause_"), ("krause+kn", "dynamic (Krause) + adaptive KN", "krause_interpolated_")],
        {"krause_": "krause/", "krause_interpolation_": "krause/mixed_", "krause_interpolated_": "krause/mixed_"},
        lambda r: f"(krause: Krause et al.'s rms-normalised step at lr {r.lr:g} with decay to the trained weights; "
                  f"mixed {r.weight:g} x krause)"),
    Row("lyrics", lyrics, [], {"samples_": "eval_samples/", "human_test_": "human_test/"}),
    Row("cache", cache,
        [("cache", "neural cache", "cache_"), ("cache+kn", "neural cache + adaptive KN", "cache_interpolated_")],
        {"cache_": "cache/"},
        lambda r: f"(cache: the last {r.size} positions, θ {r.theta:g}, λ {r.lam:g}; mixed {r.weight:g} x cache + "
                  "adaptive kn, chosen on val)"),
]
# (name, numerator, denominator) in MLflow: the network against the count-based model, < 1 when it wins.
RATIOS = [("ratio/network_to_kn_val", "val_ppl", "ngram_val_ppl"),
          ("ratio/network_to_kn_test", "test_ppl", "ngram_test_ppl"),
          ("ratio/mixed_to_kn_test", "interpolated_test_ppl", "ngram_test_ppl")]


def evaluate_checkpoint(*args, **kwargs) -> tuple[EvaluationResult, str]:
    """Every row of ROWS for `Evaluation(*args, **kwargs)`, and the markdown page of samples."""
    e = Evaluation(*args, **kwargs)
    result = EvaluationResult(epoch=e.loaded.meta.get("epoch"), **{row.field: row.run(e) for row in ROWS})
    return result, e.samples_md


def summary(result: EvaluationResult, seconds: float) -> str:
    """The perplexities, one line per model (val, test), what each row's numbers mean, and the
    default decoding's lyric metrics beside the human test text's."""
    flat = result.as_flat_dict()
    lines = [f"evaluate (checkpoint of epoch {result.epoch}, {seconds:.1f} s): perplexity"]
    for label, _, prefix in (line for row in ROWS for line in row.lines):
        if f"{prefix}val_ppl" in flat:
            test = f"  test {flat[f'{prefix}test_ppl']:9.2f}" if f"{prefix}test_ppl" in flat else ""
            lines.append(f"  {label.format(**flat):13} val {flat[f'{prefix}val_ppl']:9.2f}{test}")
    lines += [f"  {row.note(part)}" for row in ROWS if row.note and (part := getattr(result, row.field))]
    if result.lyrics:
        lines += ["  lyrics        copy rate  repeated lines  distinct-1  distinct-2  line length"]
        for name, m in [("samples", result.lyrics.samples), ("human test", result.lyrics.human)]:
            lines += [f"  {name:13} {m.copy_rate:9.3f}  {m.repeated_lines:14.3f}  {m.distinct_1:10.3f}  "
                      f"{m.distinct_2:10.3f}  {m.line_length_mean:5.1f} ± {m.line_length_std:.1f}"] if m else []
    return "\n".join(lines)


def mlflow_metrics(flat: dict[str, float]) -> dict[str, float]:
    """reports/metrics.json's numbers under the names the rows give them in MLflow, and RATIOS."""
    names = {prefix: name for row in ROWS for prefix, name in row.mlflow.items()}
    named = {}
    for key, value in flat.items():
        prefix = max((p for p in names if key.startswith(p)), key=len)
        if value is not None:  # None: an ensemble's epoch
            named[names[prefix] + key[len(prefix):]] = float(value)
    named.update({name: flat[a] / flat[b] for name, a, b in RATIOS if flat.get(a) is not None and flat.get(b)})
    return named
