"""DVC stage `check`: the settings checked before DVC touches the other stages.

DVC removes a stage's outputs before it runs the stage, so a setting that `train` refuses
(`data.batch_size: -3`) would cost the last run's checkpoints/ and metrics.csv (not cached)
before the refusal. This stage reads the same params and refuses them first; `train` depends on
its output, so DVC stops here with the one-line message and the train stage is left as it was.
`unzip` depends on it too: DVC hashes a stage's dependencies before running it, and hashing a
data.raw_path that is a FIFO or a device (a symlink to /dev/zero) would block or never end, so
this stage refuses such a path first (from `stat`, never opened).
"""

import argparse
import json
import sys

from lyricist.cli.config import run, settings_of
from lyricist.data.corpus import check_regular_file, write_text
from lyricist.project import project_root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the record that the settings passed (train depends on it)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    s = settings_of(args.params)
    raw = project_root(s.paths.root) / s.data.raw_path  # missing: DVC names it, as unzip's dependency
    for path in sorted(raw.rglob("*")) if raw.is_dir() else [raw] if raw.exists() else []:
        if not path.is_dir():
            check_regular_file(path)
    # The same text every time: train re-runs for its params, never for this record.
    write_text(args.out, json.dumps({"checked": "the train stage's settings (lyricist.settings)"}) + "\n")


if __name__ == "__main__":
    sys.exit(run(main))
