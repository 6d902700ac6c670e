"""The entry layer: the commands (train, generate, settings, the DVC stage scripts; tune and seeds)
and the only code that composes conf/ (Hydra), reads a DictConfig or parses arguments. Each goes
through lyricist.cli.config:

    compose(overrides, groups=())   conf/ with overrides (keys and group choices checked first, "did
                                    you mean") and extra groups (["+tune=default"]) -> DictConfig
    settings_of(cfg)                a DictConfig, a dict or params.yaml's path -> checked Settings
    load(overrides, groups=())      settings_of(compose(overrides, groups))
    read(params, name)              one checked section of params.yaml (a stage's own keys)
    run(main)                       main() with a user error as one line and exit status 2
"""
