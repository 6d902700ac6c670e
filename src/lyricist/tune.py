"""`python -m lyricist.tune`: the search's command, lyricist.cli.tune (the library: lyricist.experiments.search)."""

from lyricist.cli.config import run
from lyricist.cli.tune import main

if __name__ == "__main__":
    raise SystemExit(run(main))
