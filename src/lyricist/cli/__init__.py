"""The entry layer: the commands a user types, and the only code that composes conf/ (Hydra),
reads a DictConfig or parses arguments. Below it the library takes typed `Settings` only.

Every entry point goes through lyricist.cli.config:

    compose(overrides, groups=())   conf/ of the project (lyricist.project) with `overrides`
                                    (keys and group choices checked first, "did you mean"),
                                    plus extra groups such as ["+tune=default"] -> DictConfig
    settings_of(cfg)                a DictConfig, a dict or the path of params.yaml -> Settings,
                                    every value checked by the schema (lyricist.settings)
    load(overrides, groups=())      settings_of(compose(overrides, groups))
    read(params, name)              one checked section of params.yaml (a DVC stage's own keys)
    run(main)                       main() with a user error as one line and exit status 2

The commands: train (python -m lyricist.train), generate (lyricist-generate), settings (the
configuration reference) and the DVC stage scripts in pipelines/.
"""
