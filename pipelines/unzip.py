"""DVC stage `unzip`: the raw corpus (.zip with one text member, or .txt) -> UTF-8 text."""

import argparse

from lyricist.data.corpus import read_raw_text, write_text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="data/raw/<corpus>.zip or .txt")
    parser.add_argument("--out", required=True, help="data/interim/<corpus>.txt")
    args = parser.parse_args(argv)
    text = read_raw_text(args.raw)
    write_text(args.out, text)
    print(f"unzip: {args.raw} -> {args.out} ({len(text):,} characters)")


if __name__ == "__main__":
    main()
