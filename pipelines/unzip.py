"""DVC stage `unzip`: the raw corpus (.zip with one text member, or .txt) -> UTF-8 text; a
pre-split corpus (`data.split_files`: its train/valid/test files in a folder or .zip) -> a
folder of train.txt, val.txt and test.txt."""

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from lyricist.data.corpus import (MAX_COMPRESSION_RATIO, MAX_RAW_BYTES, check_split_files, read_raw_text,
                                  read_split_texts, write_text)
from lyricist.errors import run_cli


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="data/raw/<corpus>.zip or .txt (or a folder, pre-split)")
    parser.add_argument("--out", required=True, help="data/interim/<corpus>.txt (a folder when pre-split)")
    parser.add_argument("--params", default="params.yaml",
                        help="data.max_raw_bytes, data.max_compression_ratio, data.split_files (the library's "
                        "defaults when the file is absent)")
    args = parser.parse_args(argv)
    data = OmegaConf.to_container(OmegaConf.load(args.params).data) if Path(args.params).is_file() else {}
    limits = dict(max_bytes=data.get("max_raw_bytes", MAX_RAW_BYTES),
                  max_ratio=data.get("max_compression_ratio", MAX_COMPRESSION_RATIO))
    split_files = data.get("split_files")
    if split_files is None:
        text = read_raw_text(args.raw, **limits)
        write_text(args.out, text)
        print(f"unzip: {args.raw} -> {args.out} ({len(text):,} characters)")
        return
    check_split_files(split_files, 0, 0)  # its form; the fractions are preprocess's to refuse
    texts = read_split_texts(args.raw, split_files, **limits)  # all three read and checked before any output
    for split, text in texts.items():
        write_text(Path(args.out) / f"{split}.txt", text)
    sizes = ", ".join(f"{split} {len(text):,}" for split, text in texts.items())
    print(f"unzip: {args.raw} (pre-split) -> {args.out}/ ({sizes} characters)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
