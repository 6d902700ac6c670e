"""`python -m lyricist.cli.settings > docs/configuration.md`: the configuration reference, every key
of lyricist.settings with its value in the default composition of conf/ (tune's too)."""

from omegaconf import OmegaConf

from lyricist import settings
from lyricist.cli import config


def main() -> None:
    cfg = config.compose(groups=["+tune=default"])
    print(settings.reference(OmegaConf.to_container(cfg, resolve=True)), end="")


if __name__ == "__main__":
    raise SystemExit(config.run(main))
