"""DVC stage `evaluate`: val/test perplexity of the best checkpoint, and greedy samples."""

import argparse
import json
import time
from pathlib import Path

from omegaconf import OmegaConf

from lyricist.evaluation.perplexity import evaluate_checkpoint


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="models/checkpoints/best.ckpt")
    parser.add_argument("--data-dir", required=True, help="data/encoded/<corpus>/")
    parser.add_argument("--metrics", required=True, help="reports/metrics.json")
    parser.add_argument("--samples", required=True, help="reports/samples.md")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    p = OmegaConf.load(args.params)
    start = time.perf_counter()
    metrics, samples_md = evaluate_checkpoint(
        args.checkpoint, Path(args.data_dir), batch_size=p.train.eval_batch_size,
        num_steps=p.data.num_steps, prefixes=list(p.data.prefixes),
        **OmegaConf.to_container(p.generate),
        # the n-gram interpolated with the network: the same settings as the baseline stage's
        ngram_max_order=p.baseline.max_order, ngram_discount_mode=p.baseline.discount_mode,
        ngram_fixed_discount=p.baseline.fixed_discount,
        dynamic_lrs=list(p.evaluate.dynamic_lrs), dynamic_num_steps=p.evaluate.dynamic_num_steps)
    seconds = time.perf_counter() - start
    for path, text in ((args.metrics, json.dumps(metrics, indent=2) + "\n"), (args.samples, samples_md)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    print(f"{summary(metrics, seconds)}\n\nevaluate: {json.dumps(metrics)}\n\n{samples_md}")


def summary(metrics: dict, seconds: float) -> str:
    """Perplexities per model and split, one line each."""
    kn = f"kn{metrics.get('ngram_order')}"
    rows = [("neural", ""), (kn, "ngram_"), ("interpolated", "interpolated_"),
            ("dynamic", "dynamic_"), (f"{kn} adaptive", "ngram_adaptive_"),
            ("dynamic+kn", "dynamic_interpolated_")]
    lines = [f"evaluate (checkpoint of epoch {metrics.get('epoch')}, {seconds:.1f} s): perplexity"]
    for name, prefix in rows:
        cells = [f"{split} {metrics[f'{prefix}{split}_ppl']:9.2f}" for split in ("val", "test")
                 if f"{prefix}{split}_ppl" in metrics]
        if cells:
            lines.append(f"  {name:13} " + "  ".join(cells))
    if "interpolation_weight" in metrics:
        lines.append(f"  (interpolated: {metrics['interpolation_weight']:g} x neural + "
                     f"{1 - metrics['interpolation_weight']:g} x kn{metrics['ngram_order']}, "
                     "weight chosen on val; kn over the positions the network predicts)")
    if "dynamic_lr" in metrics:
        lines.append(f"  (dynamic: one SGD step at lr {metrics['dynamic_lr']:g} after each segment, the "
                     f"n-gram counting each token once read; mixed {metrics['dynamic_interpolation_weight']:g}"
                     " x dynamic, both chosen on val)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
