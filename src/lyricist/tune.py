"""`python -m lyricist.tune`: the search's command, lyricist.cli.tune (the library: lyricist.experiments.search)."""

import sys

from lyricist.cli.config import run
from lyricist.cli.tune import main

if __name__ == "__main__":
    sys.exit(run(main))
