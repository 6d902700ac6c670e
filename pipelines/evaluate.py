"""DVC stage `evaluate`: val/test perplexity of the best checkpoint, alone and mixed with the
baseline stage's Kneser-Ney model (static and dynamic), and samples (greedy beside the default
decoding, `generate.*`) measured as lyrics against the human test text."""

import argparse
import sys
import json
import time
from pathlib import Path

from lyricist.data.corpus import write_text
from lyricist.evaluation.cache import cache_of_checkpoint
from lyricist.cli.config import run, settings_of
from lyricist.evaluation.metrics import EvaluationResult, Perplexities
from lyricist.evaluation.perplexity import evaluate_checkpoint, evaluation_settings
from lyricist.tracking.results import log_evaluation


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="models/checkpoints/best.ckpt; several: their ensemble (mean probabilities)")
    parser.add_argument("--data-dir", required=True, help="data/encoded/<corpus>/")
    parser.add_argument("--metrics", required=True, help="reports/metrics.json")
    parser.add_argument("--samples", required=True, help="reports/samples.md")
    parser.add_argument("--ngram", help="models/ngram/kneser_ney.npz, the baseline stage's model "
                        "(default: fit it here again)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    s = settings_of(args.params)  # every value checked before the checkpoint is read
    start = time.perf_counter()
    result, samples_md = evaluate_checkpoint(args.checkpoint, Path(args.data_dir), **evaluation_settings(s),
                                             ngram_path=args.ngram, report=lambda line: print(line, flush=True))
    # The neural cache row (evaluate.cache_size; null: none), keys after the others.
    cache = cache_of_checkpoint(args.checkpoint, Path(args.data_dir), s.evaluate, s.baseline, args.ngram,
                                report=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - start
    flat = {**result.as_flat_dict(), **(cache.as_flat_dict() if cache else {})}
    # Atomic: a killed run leaves the previous reports, never half of a new one.
    write_text(args.metrics, result.to_json() if cache is None else json.dumps(flat, indent=2) + "\n")
    write_text(args.samples, samples_md)
    print(f"{summary(result, seconds)}{cache_summary(cache)}{lyrics_summary(result)}\n\n"
          f"evaluate: {json.dumps(flat)}\n\n{samples_md}")
    # Into the MLflow run that trained the checkpoint (logger.enabled), after the files are safe.
    log_evaluation(args.checkpoint, flat, [args.metrics, args.samples], s.logger, s.paths.root)


def summary(result: EvaluationResult, seconds: float) -> str:
    """Perplexities per model and split, one line each."""
    rows: list[tuple[str, Perplexities]] = [("neural", result.neural)]
    interpolation, dynamic, krause = result.interpolation, result.dynamic, result.krause
    if interpolation:
        kn = f"kn{interpolation.order}"
        rows += [(kn, interpolation.ngram), ("interpolated", interpolation.interpolated)]
        if dynamic:
            rows += [("dynamic", dynamic.dynamic), (f"{kn} adaptive", dynamic.ngram_adaptive),
                     ("dynamic+kn", dynamic.interpolated)]
        if krause:
            rows += [("krause", krause.dynamic), ("krause+kn", krause.interpolated)]
    lines = [f"evaluate (checkpoint of epoch {result.epoch}, {seconds:.1f} s): perplexity"]
    for name, ppl in rows:
        cells = [f"val {ppl.val:9.2f}"] + ([f"test {ppl.test:9.2f}"] if ppl.test is not None else [])
        lines.append(f"  {name:13} " + "  ".join(cells))
    if interpolation:
        lines.append(f"  (interpolated: {interpolation.weight:g} x neural + {1 - interpolation.weight:g} "
                     f"x kn{interpolation.order}, weight chosen on val; kn over the positions the network "
                     "predicts)")
    if dynamic:
        lines.append(f"  (dynamic: one SGD step at lr {dynamic.lr:g} after each segment, the n-gram "
                     f"counting each token once read; mixed {dynamic.weight:g} x dynamic, both chosen on val)")
    if krause:
        lines.append(f"  (krause: Krause et al.'s rms-normalised step at lr {krause.lr:g} with decay to the trained "
                     f"weights; mixed {krause.weight:g} x krause)")
    return "\n".join(lines)


def cache_summary(cache) -> str:
    """The neural cache's rows (Grave et al., 2017), alone and with the adaptive n-gram."""
    if cache is None:
        return ""
    rows = [("cache", cache.cache), ("cache+kn", cache.interpolated)]
    lines = [f"  {name:13} " + "  ".join([f"val {ppl.val:9.2f}"] + ([f"test {ppl.test:9.2f}"] if ppl.test is not None
                                                                    else [])) for name, ppl in rows]
    return "\n" + "\n".join(lines) + (f"\n  (cache: the last {cache.size} positions, θ {cache.theta:g}, "
                                     f"λ {cache.lam:g}; mixed {cache.weight:g} x cache + adaptive kn, chosen on val)")


def lyrics_summary(result: EvaluationResult) -> str:
    """The default decoding's lyric metrics beside the human test text's, one line each."""
    if not result.lyrics:
        return ""
    lyrics = result.lyrics
    rows = [("samples", lyrics.samples)] + ([("human test", lyrics.human)] if lyrics.human else [])
    lines = ["", "  lyrics        copy rate  repeated lines  distinct-1  distinct-2  line length"]
    for name, m in rows:
        lines.append(f"  {name:13} {m.copy_rate:9.3f}  {m.repeated_lines:14.3f}  {m.distinct_1:10.3f}  "
                     f"{m.distinct_2:10.3f}  {m.line_length_mean:5.1f} ± {m.line_length_std:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run(main))
