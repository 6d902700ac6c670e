"""DVC stage `evaluate`: val/test perplexity of the best checkpoint, and greedy samples."""

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from lyricist.evaluation import evaluate_checkpoint


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="models/checkpoints/best.ckpt")
    parser.add_argument("--data-dir", required=True, help="data/encoded/<corpus>/")
    parser.add_argument("--metrics", required=True, help="reports/metrics.json")
    parser.add_argument("--samples", required=True, help="reports/samples.md")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    p = OmegaConf.load(args.params)
    metrics, samples_md = evaluate_checkpoint(
        args.checkpoint, Path(args.data_dir), batch_size=p.train.eval_batch_size,
        num_steps=p.data.num_steps, prefixes=list(p.data.prefixes),
        **OmegaConf.to_container(p.generate))
    for path, text in ((args.metrics, json.dumps(metrics, indent=2) + "\n"), (args.samples, samples_md)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    print(f"evaluate: {json.dumps(metrics)}\n\n{samples_md}")


if __name__ == "__main__":
    main()
