"""`python -m lyricist.train`: the Hydra app, lyricist.cli.train (the library: lyricist.training.run)."""

from lyricist.cli.train import main

if __name__ == "__main__":
    main()
