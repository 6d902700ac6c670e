"""DVC stage `preprocess`: clean the text and split it by position into train/val/test."""

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from lyricist.data.corpus import clean_text, split_text, write_text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True, help="data/interim/<corpus>.txt")
    parser.add_argument("--out-dir", required=True, help="data/processed/<corpus>/")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    p = OmegaConf.load(args.params).data
    text = clean_text(Path(args.input).read_text(encoding="utf-8"), newline=p.newline,
                      lowercase=p.lowercase, max_chars=p.max_chars)
    splits = split_text(text, val_fraction=p.val_fraction, test_fraction=p.test_fraction)
    for name, part in splits.items():
        write_text(Path(args.out_dir) / f"{name}.txt", part)
    sizes = ", ".join(f"{name} {len(part):,}" for name, part in splits.items())
    print(f"preprocess: {len(text):,} characters -> {sizes}")


if __name__ == "__main__":
    main()
