"""`python -m lyricist.generate`: lyricist-generate (lyricist.cli.generate; the library: lyricist.decoding)."""

from lyricist.cli.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
