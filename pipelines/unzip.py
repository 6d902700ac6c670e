"""DVC stage `unzip`: the raw corpus (.zip with one text member, or .txt) -> UTF-8 text."""

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from lyricist.data.corpus import MAX_COMPRESSION_RATIO, MAX_RAW_BYTES, read_raw_text, write_text
from lyricist.errors import run_cli


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="data/raw/<corpus>.zip or .txt")
    parser.add_argument("--out", required=True, help="data/interim/<corpus>.txt")
    parser.add_argument("--params", default="params.yaml",
                        help="data.max_raw_bytes, data.max_compression_ratio (the library's defaults "
                        "when the file is absent)")
    args = parser.parse_args(argv)
    data = OmegaConf.load(args.params).data if Path(args.params).is_file() else {}
    text = read_raw_text(args.raw, max_bytes=data.get("max_raw_bytes", MAX_RAW_BYTES),
                         max_ratio=data.get("max_compression_ratio", MAX_COMPRESSION_RATIO))
    write_text(args.out, text)
    print(f"unzip: {args.raw} -> {args.out} ({len(text):,} characters)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
