"""`python -m lyricist.generate`: lyricist-generate (lyricist.cli.generate; the library: lyricist.decoding)."""

import sys

from lyricist.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
