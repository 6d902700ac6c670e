"""The configuration: conf/ composes (params.yaml is its composition, every option composes and
builds), and the typed settings schema (lyricist.settings) declares, bounds and describes each key."""

import subprocess
import sys

import pytest
import yaml
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT, compose_config, project_env
from lyricist import settings
from lyricist.cli.config import check_overrides, settings_of
from lyricist.models import RecurrentLM


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
    # a setting that moved section (AR/TAR went from train to model in issue 31) is found by name
    (["+train.ar_alpha=1"], "train.ar_alpha is not a setting: did you mean model.ar_alpha? "),
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
    with pytest.raises(ValueError, match="^train.tar_beta is not a setting: did you mean model.tar_beta"):
        settings.with_overrides(s, {"train.tar_beta": 1.0})
    with pytest.raises(ValueError, match=r"^train.zzz is not a setting \(docs"):  # nothing near: no guess
        settings.with_overrides(s, {"train.zzz": 1.0})
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
    check_overrides(["model=gru", "optim/scheduler=step", "trainer.max_time=00:00:01:00",
                     "optim.scheduler.gamma=0.1", "+trainer.max_time=1", "hydra.run.dir=x", "-m"], ROOT / "conf")
    with pytest.raises(ValueError, match="data.batchsize is not a setting: did you mean data.batch_size"):
        check_overrides(["data.batchsize=3"], ROOT / "conf")


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


def test_params_yaml_is_the_composition_of_conf():
    composed = OmegaConf.to_container(compose_config(), resolve=True)
    on_disk = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert on_disk == composed, "params.yaml is stale: run `make params`"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("option", _options("model"))
def test_every_model_option_instantiates(option):
    cfg = compose_config([f"model={option}"])
    model = RecurrentLM(settings_of(cfg).model, 11)
    assert isinstance(model, RecurrentLM)
    assert model.config.cell == cfg.model.cell


def test_model_options_reach_the_model_from_the_command_line():
    cfg = compose_config(["model=gru", "model.num_layers=2", "model.hidden_size=32", "model.embedding_size=32",
                          "model.tie_weights=true", "model.output_dropout=0.5", "model.init=uniform",
                          "model.init_scale=0.08"])
    model = RecurrentLM(settings_of(cfg).model, 11)
    assert len(model.cells) == 2 and model.embedding.weight is model.head.weight
    assert model.output_dropout.p == 0.5 and model.embedding_dropout.p == cfg.model.dropout
    assert model.cells[1].weight_hh.abs().max() <= 0.08


def test_tying_mismatched_sizes_is_a_config_error_naming_the_fix():
    cfg = compose_config(["model=lstm", "model.embedding_size=128"])  # tied, hidden 256
    with pytest.raises(ValueError, match="set model.embedding_size=256 or model.tie_weights=false"):
        settings_of(cfg)


@pytest.mark.parametrize("option", _options("optim"))
def test_every_optim_option_instantiates(option):
    import torch

    cfg = compose_config([f"optim={option}"])
    optimizer, scheduler = settings_of(cfg).optim.build([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.param_groups[0]["lr"] == cfg.optim.lr
    assert type(scheduler).__name__ == "ReduceLROnPlateau"  # the default schedule


@pytest.mark.parametrize("option", _options("optim/scheduler"))
def test_every_scheduler_option_builds_a_torch_schedule(option):
    import torch

    cfg = compose_config([f"optim/scheduler={option}"])
    _, scheduler = settings_of(cfg).optim.build([torch.nn.Parameter(torch.zeros(2))])
    assert (scheduler is None) == (option == "none")
    if scheduler is not None:
        assert f"{type(scheduler).__module__}.{type(scheduler).__name__}" == cfg.optim.scheduler._target_


@pytest.mark.parametrize("option", _options("trainer"))
def test_every_trainer_option_composes(option):
    cfg = compose_config([f"trainer={option}"])
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if cfg.trainer.accelerator == "cpu":
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs


# conf/data/custom.yaml and presplit.yaml are templates: the user supplies its raw file (and may `dvc add` it),
# so the project commits no pointer for it.
USER_SUPPLIED = {"custom", "presplit"}


@pytest.mark.parametrize("option", [
    pytest.param(o, marks=pytest.mark.skip(reason="a template: the user supplies the raw file "
                                                  "(and its .dvc pointer, if they `dvc add` it)"))
    if o in USER_SUPPLIED else o for o in _options("data")])
def test_every_data_option_names_an_existing_pointer(option):
    cfg = compose_config([f"data={option}"])
    assert cfg.data.name == option
    assert (ROOT / f"{cfg.data.raw_path}.dvc").is_file(), "commit the .dvc pointer of the raw corpus"
    assert cfg.data.sampling in ("random", "consecutive")


@pytest.mark.parametrize("option", _options("data"))
def test_every_data_option_sets_every_key_the_stages_read(option):
    keys = list(compose_config().data)  # the default corpus's keys, in its order
    cfg = compose_config([f"data={option}"])
    assert sorted(cfg.data) == sorted(keys)
    assert cfg.data.name == option and cfg.data.tokenizer in ("char", "word")
    assert cfg.data.sampling in ("random", "consecutive")


def test_custom_template_points_at_a_user_file_with_plain_defaults():
    cfg = compose_config(["data=custom"])
    data = cfg.data
    assert (data.name, data.raw_path, cfg.paths.encoded) == ("custom", "data/raw/custom.txt",
                                                             "data/encoded/custom")
    assert (data.newline, data.lowercase, data.max_chars, data.tokenizer, data.max_vocab_size,
            data.min_freq) == ("keep", False, None, "char", None, 1)
    assert (data.val_fraction, data.test_fraction, list(data.prefixes)) == (0.05, 0.05, ["the"])
    assert "dvc exp run -S data=custom" in (ROOT / "conf/data/custom.yaml").read_text(encoding="utf-8")
    # The same composition with the user's path, as on the command line.
    assert compose_config(["data=custom", "data.raw_path=/tmp/mine.zip"]).data.raw_path == "/tmp/mine.zip"


@pytest.mark.parametrize("option", _options("logger"))
def test_every_logger_option_composes(option):
    cfg = compose_config([f"logger={option}"])
    assert isinstance(cfg.logger.enabled, bool)


def test_unknown_group_option_is_refused_by_hydra():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="model"):
        compose_config(["model=transformer"])


def test_slurm_launcher_config_composes_with_submitit():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.array_parallelism == 16


def test_sweep_callback_is_configured():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.callbacks.mlflow_sweep._target_ == "lyricist.cli.sweep.MlflowSweepCallback"


# The presets: two recipes (the seed chapters, hidden size as each chapter) whose cell is chosen
# with model= (the chapter's rnn when none is given).
RECIPES = {"seed_mxnet": 256, "seed_d2l": 512}


CELLS = ("rnn", "gru", "lstm")


@pytest.mark.parametrize("preset", [o for o in _options("experiment") if o.startswith("tuned_")])
def test_every_tuned_preset_composes_for_its_corpus_and_instantiates(preset):
    cfg = compose_config([f"experiment={preset}"])
    assert cfg.data.name == preset.removeprefix("tuned_")
    assert isinstance(RecurrentLM(settings_of(cfg).model, 11), RecurrentLM)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("cell", CELLS)
def test_every_experiment_preset_composes_and_instantiates(recipe, cell):
    cfg = compose_config([f"experiment={recipe}", f"model={cell}"])
    model = RecurrentLM(settings_of(cfg).model, 11)
    assert (model.config.cell, model.config.hidden_size) == (cell, RECIPES[recipe])
    assert model.config.embedding_size is None  # the seeds' one-hot input
    assert cfg.optim._target_ == "torch.optim.SGD"
    # The seeds train with a constant lr, no weight decay and no dropout, whatever the defaults say.
    assert (cfg.optim.scheduler._target_, cfg.optim.weight_decay, cfg.model.dropout) == (None, 0.0, 0.0)
    assert cfg.logger.run_name == f"{recipe}_{cell}"
    if recipe == "seed_mxnet":
        assert (cfg.data.max_chars, cfg.data.newline, cfg.optim.lr, cfg.train.clip_theta,
                cfg.trainer.max_epochs, cfg.train.loss_reduction) == (20000, "space", 0.2, 5.0, 200, "sum")
        assert list(cfg.data.prefixes) == ["分开", "不分开", "战争中部队"]
    else:
        assert (cfg.data.name, cfg.model.hidden_size, cfg.optim.lr, cfg.train.clip_theta,
                cfg.trainer.max_epochs) == ("timemachine", 512, 1.0, 1.0, 500)


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_without_model_is_the_chapters_rnn(recipe):
    cfg = compose_config([f"experiment={recipe}"])
    assert (cfg.model.cell, cfg.logger.run_name) == ("rnn", f"{recipe}_rnn")


def test_gru_and_lstm_state_only_what_differs_from_rnn():
    def model(cell):
        return OmegaConf.to_container(compose_config([f"model={cell}"]).model)

    rnn = model("rnn")
    assert "forget_bias" not in rnn  # only the lstm has a forget gate (the schema's default: null)
    assert model("gru") == {**rnn, "cell": "gru", "embedding_size": 128, "dropout": 0.3}
    assert model("lstm") == {**rnn, "cell": "lstm", "embedding_size": 256, "tie_weights": True, "init": "uniform",
                             "init_scale": 0.1, "dropout": 0.4, "locked_dropout": True, "weight_drop": 0.5,
                             "embedding_row_dropout": 0.1, "forget_bias": None}


def test_logger_none_is_mlflow_disabled():
    mlflow = OmegaConf.to_container(compose_config(["logger=mlflow"]).logger)
    assert OmegaConf.to_container(compose_config(["logger=none"]).logger) == {**mlflow, "enabled": False}


@pytest.mark.parametrize("override", ["model=transformer", "optim=rmsprop", "data=wikipedia"])
def test_unknown_group_options_name_the_choices(override):
    with pytest.raises(MissingConfigException, match="Available options"):
        compose_config([override])
