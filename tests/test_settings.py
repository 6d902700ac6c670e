"""The typed settings schema (lyricist.settings): one place declares, bounds and describes each key."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose_config, project_env
from lyricist import settings
from lyricist.cli.config import settings_of


def test_the_configuration_reference_is_current():
    """docs/configuration.md is what `python -m lyricist.cli.settings` writes: rerun it after a change."""
    written = settings.reference(OmegaConf.to_container(compose_config(["+tune=default"]), resolve=True))
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == written, \
        "stale: python -m lyricist.cli.settings > docs/configuration.md"
    for name, section in settings.Settings.model_fields.items():  # every key documented, with its meaning
        for field, info in settings._inner(section.annotation).model_fields.items():
            assert info.description, f"{name}.{field} has no description"
            assert f"`{name}.{info.alias or field}`" in written


def test_every_group_option_of_conf_passes_the_schema():
    for group in ("data", "model", "optim", "optim/scheduler", "trainer", "logger", "experiment", "+tune"):
        for option in sorted(p.stem for p in (ROOT / "conf" / group.lstrip("+")).glob("*.yaml")):
            settings_of(compose_config([f"{group}={option}"]))


@pytest.mark.parametrize("overrides, message", [
    (["+model.hiden_size=8"], "model.hiden_size is not a setting: did you mean model.hidden_size? "),
    (["model.hidden_size=abc"], "model.hidden_size='abc' is not allowed: use a valid integer (hidden units per layer)"),
    (["data.batch_size=-3"], "data.batch_size=-3 is not allowed: use a value >= 1 (sequences per training batch)"),
    (["model.hidden_size=100000"], "model.hidden_size=100000 is not allowed: use a value <= 4096"),
    (["baseline.max_order=500"], "baseline.max_order=500 is not allowed: use a value <= 10"),
    (["train.seed=abc"], "train.seed='abc' is not allowed: use a valid integer"),
    (["model.embedding_size=64"], "model.tie_weights=True shares the embedding (64) with the head (256): "
                                  "set model.embedding_size=256 or model.tie_weights=false"),
    (["data.split_files={train: a, val: b, test: c}"], "with data.split_files: a corpus that comes split is never re-split. Use 0: set data.val_fraction=0"),
    (["optim/scheduler=step", "+optim.scheduler.bogus=1"], "unexpected keyword argument 'bogus'"),
])
def test_a_bad_setting_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ValueError) as err:
        settings_of(compose_config(overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("space, message", [
    ("{model.hiden_size: {choices: [128]}}", "tune.space.model.hiden_size is not a setting: did you mean "
                                              "model.hidden_size? (docs/configuration.md lists them all)"),
    ("{model.hidden_size: {choices: [abc, 32]}}", "tune.space.model.hidden_size.choices='abc' is not allowed: use a "
                                                   "valid integer (hidden units per layer)"),
    ("{model.hidden_size: {low: 64, high: 8000}}", "tune.space.model.hidden_size.high=8000 is not allowed: use a value "
                                                    "<= 4096 (hidden units per layer)"),
    ("{model.hidden_size: {low: 64.0, high: 128}}", "tune.space.model.hidden_size.low=64.0 is not allowed: use a "
                                                     "valid integer"),
    ("{model.hidden_size: {low: 64, high: 128, step: 0.5}}", "tune.space.model.hidden_size.step=0.5: an integer "
                                                              "setting's range takes an integer step"),
    ("{trainer.max_epochs: {low: 0, high: 5}}", "tune.space.trainer.max_epochs.low: trainer.max_epochs=0 is not "
                                                 "allowed: use an integer >= 1"),
    ("{model.dropout: {low: 0.0, high: 1.0}}", "tune.space.model.dropout.high=1.0 is not allowed: use a value < 1"),
    ("{model.tie_weights: {choices: [true, 1]}}", "tune.space.model.tie_weights.choices=1 is not allowed: use a "
                                                   "valid boolean"),
    ("{model.cell: {low: 1, high: 2}}", "tune.space.model.cell.low=1 is not allowed: use 'rnn', 'rnn_relu', 'gru' "
                                         "or 'lstm'"),
    ("{optim.lr: {low: 0.03, high: 0.001}}", "tune.space.optim.lr={'low': 0.03, 'high': 0.001} is not a range: "
                                              "give low <= high"),
    ("{optim.lr: {low: 0.0, high: 0.1, log: true}}", "tune.space.optim.lr: a log range needs low > 0 and no step, "
                                                      "got low=0.0, step=None"),
    ("{model.num_layers: {choices: []}}", "tune.space.model.num_layers.choices=[]: give at least one value"),
    ("{model.embedding_size: {choices: [32], tied: model.hiden}}", "tune.space.model.embedding_size.tied=model.hiden "
                                                                    "is not a setting: did you mean model.hidden_size?"),
    ("{optim.lr: null}", "tune.space has no key left to search (every one null)"),
    ("{optim.scheduler.gamma: {low: 0.1, high: 0.9}}", "tune.space.optim.scheduler.gamma.low=0.1: optim (torch.optim.Adam, "
                                                        "scheduler torch.optim.lr_scheduler.ReduceLROnPlateau) cannot be "
                                                        "built: optim.scheduler.gamma: unexpected keyword argument 'gamma'"),
    ("{trainer.max_tme: {choices: [1]}}", "tune.space.trainer.max_tme.choices=1: trainer.max_tme: unexpected keyword "
                                          "argument 'max_tme' of pytorch_lightning.Trainer: did you mean trainer.max_time?"),
])
def test_a_bad_search_space_is_one_line_naming_the_key(space, message):
    with pytest.raises(ValueError) as err:
        settings_of(compose_config(["+tune=default", "tune.space=null", f"tune.space={space}"]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_search_space_is_drawn_in_its_settings_types():
    """An integer setting's range stays integers, a float setting's becomes floats (what the sampler
    draws); choices are checked, not converted away from their setting's type."""
    space = settings_of(compose_config(["+tune=default", "tune.space=null", "tune.space={model.dropout: {low: 0, "
                                        "high: 0.5}, model.ar_alpha: {low: 0, high: 4}, trainer.max_epochs: {low: 2, "
                                        "high: 6, step: 2}, model.embedding_size: {choices: [null, 32]}}"])).tune.space
    assert (space["model.dropout"].low, space["model.ar_alpha"].high) == (0.0, 4.0)
    assert all(isinstance(v, float) for v in (space["model.dropout"].low, space["model.ar_alpha"].low))
    assert (space["trainer.max_epochs"].low, space["trainer.max_epochs"].step) == (2, 2)
    assert isinstance(space["trainer.max_epochs"].low, int) and space["model.embedding_size"].choices == [None, 32]


def test_with_overrides_sets_dotted_keys_and_checks_them_again():
    s = settings_of(compose_config())
    changed = settings.with_overrides(s, {"model.hidden_size": 64, "model.embedding_size": 64, "train.seed": 3})
    assert (changed.model.hidden_size, changed.train.seed, s.model.hidden_size) == (64, 3, 256)
    assert settings.value_at(changed, "model.embedding_size") == 64
    with pytest.raises(ValueError, match="^model.hiden_size is not a setting: did you mean model.hidden_size"):
        settings.with_overrides(s, {"model.hiden_size": 64})
    with pytest.raises(ValueError, match="^model.hidden_size=0 is not allowed: use a value >= 1"):
        settings.with_overrides(s, {"model.hidden_size": 0})


def test_a_typo_on_the_command_line_is_one_line_before_hydra_composes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lyricist.train", "model.hiden_size=8",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path,
                          env=project_env())
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0] == ("error: model.hiden_size is not a setting: did you mean "
                                           "model.hidden_size? (docs/configuration.md lists them all)")
    assert not (tmp_path / "run").exists()


def test_overrides_below_free_form_nodes_and_group_choices_pass_the_key_check():
    settings.check_override_keys(["model=gru", "optim/scheduler=step", "trainer.max_time=00:00:01:00",
                                  "optim.scheduler.gamma=0.1", "+trainer.max_time=1", "hydra.run.dir=x", "-m"])
    with pytest.raises(ValueError, match="data.batchsize is not a setting: did you mean data.batch_size"):
        settings.check_override_keys(["data.batchsize=3"])


ZAREMBA_SMALL = ["data=presplit", "model.num_layers=2", "model.hidden_size=200", "model.embedding_size=200",
                 "model.tie_weights=false", "model.dropout=0", "model.locked_dropout=false", "model.weight_drop=0",
                 "model.embedding_row_dropout=0", "model.init=uniform", "model.init_scale=0.1", "optim=sgd",
                 "optim.lr=1.0", "optim/scheduler=multistep", "optim.scheduler.milestones=[4,5,6,7,8,9,10,11,12]",
                 "optim.scheduler.gamma=0.5", "trainer.max_epochs=13", "train.clip_theta=5", "model.ar_alpha=0",
                 "model.tar_beta=0", "train.weight_averaging=null", "data.batch_size=20", "data.num_steps=20"]


def test_zaremba_small_ptb_recipe_is_overrides_and_halves_the_lr_every_epoch_after_the_fourth():
    """docs/recipes.md: Zaremba et al. (2014)'s small PTB model, written as overrides."""
    import torch

    assert " ".join(ZAREMBA_SMALL) in (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    s = settings_of(compose_config(ZAREMBA_SMALL))
    optimizer, scheduler = s.optim.build([torch.nn.Parameter(torch.zeros(1))])
    lrs = []
    for _ in range(13):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()  # the epoch's end
    assert lrs == [1.0] * 4 + [0.5 ** k for k in range(1, 10)]
