"""DVC stage `train`: train with the composed config in params.yaml (see conf/)."""

import argparse
import sys

from omegaconf import OmegaConf

from lyricist.errors import run_cli
from lyricist.train import USER_ERRORS, train


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", required=True, help="checkpoints/ and metrics.csv go here (paths.models)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    train(OmegaConf.load(args.params), output_dir=args.out_dir)  # checks it all, then reads paths.encoded


if __name__ == "__main__":
    sys.exit(run_cli(main, USER_ERRORS))
