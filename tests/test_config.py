"""conf/ is the single source of truth: params.yaml is its composition, every option composes."""

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT, compose_config, with_data
from lyricist.cli.config import settings_of
from lyricist.models import RecurrentLM


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


def test_a_trained_model_keeps_its_decoding_for_the_cli_and_the_served_model(tiny_cfg, tiny_data, tmp_path):
    """conf's `generate:` travels in the checkpoint: what lyricist-generate and the served model
    default to for that model (lyricist.checkpoint.LoadedModel.decoding)."""
    from lyricist.checkpoint import load_checkpoint
    from lyricist.settings import Decoding
    from conftest import train

    tiny_cfg.logger.enabled = False
    tiny_cfg.generate.temperature = 0.7
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    decoding = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt").decoding
    assert decoding == Decoding(**OmegaConf.to_container(tiny_cfg.generate)) and decoding.temperature == 0.7


def test_torch_is_pinned_once_and_the_served_model_carries_the_pins():
    """pyproject.toml pins the stack; the Makefile and the MLflow model take it from there."""
    import re

    from lyricist.tracking.serving import pinned_requirements

    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    [torch_pin] = re.findall(r'"(torch==[\d.]+)"', pyproject)
    assert "torch==" not in (ROOT / "Makefile").read_text(encoding="utf-8")
    assert not [p for p in (ROOT / "src").rglob("*.py") if "torch==" in p.read_text(encoding="utf-8")]
    requirements = pinned_requirements()
    assert requirements[0] == torch_pin and all("==" in r for r in requirements)
    assert {r.split("==")[0] for r in requirements} == {"torch", "numpy", "pandas", "pytorch-lightning"}
