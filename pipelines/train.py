"""DVC stage `train`: train with the composed config in params.yaml (see conf/)."""

import argparse
import sys

from lyricist.cli.config import run, settings_of
from lyricist.training.run import train


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", required=True, help="checkpoints/ and metrics.csv go here (paths.models)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    train(settings_of(args.params), output_dir=args.out_dir)  # all checked, then paths.encoded read


if __name__ == "__main__":
    sys.exit(run(main))
