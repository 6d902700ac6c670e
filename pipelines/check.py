"""DVC stage `check`: the train stage's settings checked before DVC touches the train stage.

DVC removes a stage's outputs before it runs the stage, so a setting that `train` refuses
(`data.batch_size: -3`) would cost the last run's checkpoints/ and metrics.csv (not cached)
before the refusal. This stage reads the same params and refuses them first; `train` depends on
its output, so DVC stops here with the one-line message and the train stage is left as it was.
"""

import argparse
import json
import sys

from lyricist.cli.config import run, settings_of
from lyricist.data.corpus import write_text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the record that the settings passed (train depends on it)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    settings_of(args.params)
    # The same text every time: train re-runs for its params, never for this record.
    write_text(args.out, json.dumps({"checked": "the train stage's settings (lyricist.settings)"}) + "\n")


if __name__ == "__main__":
    sys.exit(run(main))
