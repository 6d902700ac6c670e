"""DVC stage `preprocess`: clean the text and split it by position into train/val/test."""

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from lyricist.data.corpus import check_splits, clean_text, count_control_chars, split_text, write_text
from lyricist.errors import run_cli


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True, help="data/interim/<corpus>.txt")
    parser.add_argument("--out-dir", required=True, help="data/processed/<corpus>/")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    p = OmegaConf.load(args.params).data
    raw = Path(args.input).read_text(encoding="utf-8")
    text = clean_text(raw, newline=p.newline, lowercase=p.lowercase, max_chars=p.max_chars)
    splits = split_text(text, val_fraction=p.val_fraction, test_fraction=p.test_fraction)
    check_splits(splits, {"val": p.val_fraction, "test": p.test_fraction})  # before any output
    stripped = count_control_chars(raw)
    if stripped:
        print(f"preprocess: stripped {stripped:,} control characters (all but \\t and line ends)")
    for name, part in splits.items():
        write_text(Path(args.out_dir) / f"{name}.txt", part)
    sizes = ", ".join(f"{name} {len(part):,}" for name, part in splits.items())
    print(f"preprocess: {len(text):,} characters -> {sizes}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
