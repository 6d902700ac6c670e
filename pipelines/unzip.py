"""DVC stage `unzip`: the raw corpus (.zip with one text member, or .txt) -> UTF-8 text; a
pre-split corpus (`data.split_files`: its train/valid/test files in a folder or .zip) -> a
folder of train.txt, val.txt and test.txt."""

import argparse
import sys
from pathlib import Path

from lyricist.cli.config import read, run
from lyricist.data.corpus import MAX_COMPRESSION_RATIO, MAX_RAW_BYTES, read_raw_text, read_split_texts, write_text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="data/raw/<corpus>.zip or .txt (or a folder, pre-split)")
    parser.add_argument("--out", required=True, help="data/interim/<corpus>.txt (a folder when pre-split)")
    parser.add_argument("--params", default="params.yaml",
                        help="data.max_raw_bytes, data.max_compression_ratio, data.split_files (the library's "
                        "defaults when the file is absent)")
    args = parser.parse_args(argv)
    data = read(args.params, "data") if Path(args.params).is_file() else None  # checked before any work
    limits = dict(max_bytes=data.max_raw_bytes if data else MAX_RAW_BYTES,
                  max_ratio=data.max_compression_ratio if data else MAX_COMPRESSION_RATIO)
    if not (data and data.split_files):
        text = read_raw_text(args.raw, **limits)
        write_text(args.out, text)
        print(f"unzip: {args.raw} -> {args.out} ({len(text):,} characters)")
        return
    texts = read_split_texts(args.raw, data.split_files.model_dump(), **limits)  # all three read and checked before any output
    for split, text in texts.items():
        write_text(Path(args.out) / f"{split}.txt", text)
    sizes = ", ".join(f"{split} {len(text):,}" for split, text in texts.items())
    print(f"unzip: {args.raw} (pre-split) -> {args.out}/ ({sizes} characters)")


if __name__ == "__main__":
    sys.exit(run(main))
