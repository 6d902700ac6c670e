"""DVC stage `evaluate`: val/test perplexity of the best checkpoint, alone and mixed with the
baseline stage's Kneser-Ney model (static, dynamic, with a neural cache), and samples (greedy
beside the default decoding, `generate.*`) measured as lyrics against the human test text:
the rows of lyricist.evaluation.evaluate."""

import argparse
import json
import sys
import time
from pathlib import Path

from lyricist.cli.config import run, settings_of
from lyricist.data.corpus import write_text
from lyricist.evaluation.evaluate import evaluate_checkpoint, evaluation_settings, mlflow_metrics, summary
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
    # Atomic: a killed run leaves the previous reports, never half of a new one.
    write_text(args.metrics, result.to_json())
    write_text(args.samples, samples_md)
    flat = result.as_flat_dict()
    print(f"{summary(result, time.perf_counter() - start)}\n\nevaluate: {json.dumps(flat)}\n\n{samples_md}")
    # Into the MLflow run that trained the checkpoint (logger.enabled), after the files are safe.
    log_evaluation(args.checkpoint, mlflow_metrics(flat), result.epoch or 0, [args.metrics, args.samples],
                   s.logger, s.paths.root)


if __name__ == "__main__":
    sys.exit(run(main))
