"""Experiments over many trainings, on typed settings: a hyper-parameter search (search) and one
recipe over several seeds (seeds). Their commands are lyricist.cli.tune and lyricist.cli.seeds."""
