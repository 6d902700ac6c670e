"""DVC stage `preprocess`: clean the text and split it by position into train/val/test; a
pre-split corpus (the unzip stage wrote a folder) is cleaned file by file and never re-split."""

import argparse
import sys
from pathlib import Path

from lyricist.cli.config import read, run
from lyricist.data.corpus import (SPLITS, CorpusError, check_split_texts, check_splits,
                                  clean_text, count_control_chars, split_text, write_text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True, help="data/interim/<corpus>.txt (a folder when pre-split)")
    parser.add_argument("--out-dir", required=True, help="data/processed/<corpus>/")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    p = read(args.params, "data")  # checked before any work (the split files' form too)
    presplit = Path(args.input).is_dir()
    if presplit != (p.split_files is not None):
        raise CorpusError(f"{args.input} is {'a folder' if presplit else 'a file'}, but data.split_files is "
                          f"{'null' if p.split_files is None else 'set'}: it was made with other settings. "
                          "Re-run the unzip stage first (`dvc repro preprocess` runs both).")
    clean = dict(newline=p.newline, lowercase=p.lowercase, max_chars=p.max_chars)
    if presplit:
        # As given: each file cleaned alone (max_chars caps each), none moved to another split.
        raws = {s: (Path(args.input) / f"{s}.txt").read_text(encoding="utf-8") for s in SPLITS}
        splits = {s: clean_text(raw, **clean) for s, raw in raws.items()}
        check_split_texts(splits)  # before any output
        stripped = sum(count_control_chars(raw) for raw in raws.values())
    else:
        raw = Path(args.input).read_text(encoding="utf-8")
        text = clean_text(raw, **clean)
        splits = split_text(text, val_fraction=p.val_fraction, test_fraction=p.test_fraction)
        check_splits(splits, {"val": p.val_fraction, "test": p.test_fraction})  # before any output
        stripped = count_control_chars(raw)
    if stripped:
        print(f"preprocess: stripped {stripped:,} control characters (all but \\t and line ends)")
    for name, part in splits.items():
        write_text(Path(args.out_dir) / f"{name}.txt", part)
    sizes = ", ".join(f"{name} {len(part):,}" for name, part in splits.items())
    total = sum(len(part) for part in splits.values())
    print(f"preprocess: {total:,} characters -> {sizes}{' (as given: pre-split)' if presplit else ''}")


if __name__ == "__main__":
    sys.exit(run(main))
