"""`python -m lyricist.seeds`: the seeds' command, lyricist.cli.seeds (the library: lyricist.experiments.seeds)."""

from lyricist.cli.config import run
from lyricist.cli.seeds import main

if __name__ == "__main__":
    raise SystemExit(run(main))
