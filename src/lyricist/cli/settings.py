"""`python -m lyricist.cli.settings > docs/configuration.md`: the configuration reference, every key
of lyricist.settings with its value in the default composition of conf/ (tune's too)."""

import sys

from omegaconf import OmegaConf

from lyricist import settings
from lyricist.cli import config


def main() -> None:
    cfg = config.compose(groups=["+tune=default"])
    sys.stdout.write(settings.reference(OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    sys.exit(config.run(main))
