"""One way in (lyricist.cli): the same mistake gives the same one line, status 2, from
`python -m lyricist.train` and from the DVC stage scripts reading params.yaml, and nothing is
created: no run directory, no outputs/, no MLflow store or run."""

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose_config, project_env, stage
from lyricist.cli import train as train_cli
from lyricist.cli.config import run, settings_of

# (conf groups chosen, the key and value a user got wrong, the one line every entry point prints);
# on the command line `key=value`, a key that no conf file holds added with +.
MISTAKES = {
    "typo": ([], "model.hiden_size", 3,
             "model.hiden_size is not a setting: did you mean model.hidden_size? (docs/configuration.md lists them all)"),
    "bad value": ([], "data.batch_size", -3,
                  "data.batch_size=-3 is not allowed: use a value >= 1 (sequences per training batch)"),
    "step_size": (["optim/scheduler=step"], "optim.scheduler.step_size", -3,
                  "optim.scheduler.step_size=-3 is not allowed: use a value >= 1 (StepLR: intervals between two cuts "
                  "of the lr)"),
    "milestones": (["optim/scheduler=multistep"], "optim.scheduler.milestones", "abc",
                   "optim.scheduler.milestones='abc' is not allowed: use a valid list (MultiStepLR: the increasing "
                   "intervals at which the lr is cut)"),
    "optimizer argument": ([], "optim.betaz", [0.9, 0.99],
                           "optim (torch.optim.Adam, scheduler torch.optim.lr_scheduler.ReduceLROnPlateau) cannot be "
                           "built: optim.betaz: unexpected keyword argument 'betaz' of torch.optim.Adam: did you mean "
                           "optim.betas? (check the class names and arguments under optim and optim.scheduler)"),
    "no epoch limit": ([], "trainer.max_epochs", -1,
                       "trainer.max_epochs=-1 is not allowed: use an integer >= 1, or -1 (no limit; then set "
                       "+trainer.max_time, e.g. +trainer.max_time=00:02:00:00) (epochs to train)"),
}


def _override(key: str, value) -> str:
    text = "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
    return f"{'+' if key == 'optim.betaz' else ''}{key}={text}"


def _nothing_created(tmp_path) -> bool:
    return sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("mistake", MISTAKES, ids=str)
def test_the_same_mistake_is_the_same_line_from_train_and_the_stage_scripts(mistake, tmp_path, capsys, monkeypatch):
    groups, key, value, line = MISTAKES[mistake]
    # The stage scripts read params.yaml: the default composition with the mistake in it.
    params = OmegaConf.to_container(compose_config(groups), resolve=True)
    section, *middle, leaf = key.split(".")
    node = params[section]
    for part in middle:
        node = node[part]
    node[leaf] = value
    OmegaConf.save(params, tmp_path / "params.yaml")
    for name, argv in [("train", ["--out-dir", str(tmp_path / "run")]),
                       ("check", ["--out", str(tmp_path / "run" / "settings_checked.json")])]:
        script = stage(name)
        assert run(lambda: script.main([*argv, "--params", str(tmp_path / "params.yaml")])) == 2
        assert capsys.readouterr().err.splitlines()[0] == f"error: {line}", name

    # `python -m lyricist.train` in this process (its start-up costs seconds; one case below runs it for real).
    args = [*TINY, *groups, f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'run'}", _override(key, value)]
    monkeypatch.setattr(sys, "argv", ["lyricist.train", *args])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    with pytest.raises(SystemExit) as exit:
        train_cli.main()
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == f"error: {line}"
    assert _nothing_created(tmp_path), sorted(p.name for p in tmp_path.iterdir())
    if mistake == "step_size":
        proc = subprocess.run([sys.executable, "-m", "lyricist.train", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=project_env())
        assert proc.returncode == 2 and proc.stderr.splitlines()[0] == f"error: {line}", proc.stderr
        assert "Traceback" not in proc.stderr and _nothing_created(tmp_path)


def test_every_conf_optimizer_and_schedule_builds_the_same_torch_objects():
    """The optimizer by _target_ with its arguments from conf/optim (nothing hard-coded): the
    values of each file, as torch keeps them."""
    expected = {"adam": {"lr": 0.015, "weight_decay": 0.0002}, "sgd": {"lr": 0.2, "weight_decay": 0.0, "momentum": 0.0}}
    schedules = {"plateau": {"factor": 0.5, "patience": 0, "mode": "min"}, "step": {"step_size": 5, "gamma": 0.5},
                 "multistep": {"milestones": {10: 1, 20: 1}, "gamma": 0.5}, "exponential": {"gamma": 0.9},
                 "cosine": {"T_max": 30, "eta_min": 0.0}, "none": None}
    for optimizer, values in expected.items():
        for schedule, arguments in schedules.items():
            s = settings_of(compose_config([f"optim={optimizer}", f"optim/scheduler={schedule}"]))
            built, scheduler = s.optim.build([torch.zeros(1, requires_grad=True)])
            assert type(built).__name__ == {"adam": "Adam", "sgd": "SGD"}[optimizer]
            assert {k: built.defaults[k] for k in values} == values
            if arguments is None:
                assert scheduler is None
            else:
                assert {k: scheduler.state_dict()[k] for k in arguments} == arguments


@pytest.mark.parametrize("overrides, message", [
    (["optim/scheduler=multistep", "optim.scheduler.milestones=[5,3]"],
     "optim.scheduler.milestones=[5, 3] is not allowed: use increasing intervals (epochs), e.g. [10, 20]"),
    (["optim/scheduler=multistep", "optim.scheduler.milestones=[0,3]"], "optim.scheduler.milestones.0=0 is not allowed"),
    (["optim/scheduler=cosine", "optim.scheduler.T_max=0"], "optim.scheduler.T_max=0 is not allowed: use a value >= 1"),
    (["optim.lr=0"], "optim.lr=0 is not allowed: use a value > 0 (learning rate)"),
    (["+optim.momentum=0.9"], "unexpected keyword argument 'momentum' of torch.optim.Adam"),
    (["optim._target_=torch.optim.Adamm"], "optim._target_='torch.optim.Adamm' is no class: did you mean torch.optim.Adam?"),
    (["+trainer.max_tme=00:00:01:00"], "trainer.max_tme: unexpected keyword argument 'max_tme' of "
                                       "pytorch_lightning.Trainer: did you mean trainer.max_time?"),
])
def test_optimizer_schedule_and_trainer_arguments_are_checked_against_their_class(overrides, message):
    with pytest.raises(ValueError) as err:
        settings_of(compose_config(overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_epoch_limit_passes_with_a_time_limit():
    s = settings_of(compose_config(["trainer.max_epochs=-1", "+trainer.max_time=00:00:01:00"]))
    assert s.trainer.arguments()["max_time"] == "00:00:01:00" and s.trainer.max_epochs == -1
