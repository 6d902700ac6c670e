"""DVC stage `baseline`: val/test perplexity of add-one unigram and Kneser-Ney n-gram models,
and the Kneser-Ney model best on val saved for the evaluate stage."""

import argparse
import json
import sys
import time
from pathlib import Path

from lyricist.cli.config import read, run
from lyricist.data.corpus import write_text
from lyricist.data.vocab import Vocab, VocabError, load_ids
from lyricist.evaluation.ngram import evaluate_baselines, save_kneser_ney


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True, help="data/encoded/<corpus>/")
    parser.add_argument("--metrics", required=True, help="reports/baseline.json")
    parser.add_argument("--model", help="models/ngram/kneser_ney.npz: where to save the val-best "
                        "Kneser-Ney model, which the evaluate stage mixes with the network")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    settings = read(args.params, "baseline").model_dump()  # checked before any work

    data_dir = Path(args.data_dir)
    vocab = Vocab.load(data_dir / "vocab.json")
    # An absent or empty test split is left out of the metrics, as the evaluate stage does.
    splits = {split: load_ids(data_dir / f"{split}.npy") for split in ("val", "test")
              if (data_dir / f"{split}.npy").is_file()}
    train_ids = load_ids(data_dir / "train.npy")
    # Refused, not written: an empty split would leave reports/baseline.json as `{}`.
    for split, ids in {"train": train_ids, "val": splits.get("val", [])}.items():
        if len(ids) < 2:  # one token leaves nothing to predict
            raise VocabError(f"the {split} split in {data_dir} holds {len(ids)} token(s), too few (>= 2): the "
                             "baseline fits on train and chooses its order on val. Prepare the data again with a longer corpus or a "
                             "bigger data.val_fraction (`dvc repro vocab`)")
    sizes = ", ".join(f"{split} {len(ids):,}" for split, ids in {"train": train_ids, **splits}.items())
    print(f"baseline: fitting on {sizes} tokens, one line per model:", flush=True)
    start = time.perf_counter()
    metrics, best_kneser_ney = evaluate_baselines(train_ids, splits, len(vocab), **settings,
                                                  report=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - start
    if args.model:  # val was refused above unless it holds tokens: there is a best order
        save_kneser_ney(best_kneser_ney, args.model, max_order=settings["max_order"])
    write_text(args.metrics, json.dumps(metrics, indent=2) + "\n")

    print(f"baseline ({settings}, vocab {len(vocab):,}, {seconds:.1f} s):")
    for name, values in metrics.items():
        print(f"  {name:8} " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in values.items()))
    if args.model:
        print(f"  saved kn{best_kneser_ney.order} to {args.model}")


if __name__ == "__main__":
    sys.exit(run(main))
