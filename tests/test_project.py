"""The project is found from the working directory (or $LYRICIST_ROOT), never from where the
package is installed: conf/, data/ and mlflow.db are the project's the user is in."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from lyricist.project import ROOT_VARIABLE, project_root
from lyricist.tracking.store import resolve_tracking_uri


def _a_project(folder):
    (folder / "conf").mkdir(parents=True)
    (folder / "conf" / "config.yaml").write_text("defaults: []\n")
    return folder


def test_root_is_the_nearest_folder_above_the_working_directory_holding_conf(tmp_path, monkeypatch):
    project = _a_project(tmp_path / "clone")
    (project / "data" / "raw").mkdir(parents=True)
    monkeypatch.delenv(ROOT_VARIABLE, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(project / "data" / "raw")
    assert project_root() == project.resolve()
    # The default MLflow store is this project's, wherever lyricist itself is installed.
    assert resolve_tracking_uri(None) == f"sqlite:///{project.resolve() / 'mlflow.db'}"


def test_setting_and_environment_name_the_root_and_are_checked(tmp_path, monkeypatch):
    project = _a_project(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ROOT_VARIABLE, str(project))
    assert project_root() == project.resolve()
    assert project_root(str(ROOT)) == ROOT  # paths.root wins over the variable
    with pytest.raises(FileNotFoundError, match=r"not a lyricist project.*paths\.root"):
        project_root(str(tmp_path))


def test_outside_any_project_the_error_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(ROOT_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no lyricist project here.*LYRICIST_ROOT"):
        project_root()
    env = {k: v for k, v in os.environ.items() if k != ROOT_VARIABLE}
    proc = subprocess.run([sys.executable, "-m", "lyricist.train", "trainer.max_epochs=1"],
                          cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "no lyricist project here" in proc.stderr and "Traceback" not in proc.stderr


def test_hydra_entry_reads_the_conf_of_the_project_it_runs_in(tmp_path):
    """A copy of the project with another default: `python -m lyricist.train` run inside the copy
    composes the copy's conf/ (not the one beside the installed package)."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "conf", copy / "conf")
    config = copy / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("  seed: 42", "  seed: 4242"))
    proc = subprocess.run([sys.executable, "-m", "lyricist.train", "--cfg", "job"], cwd=copy,
                          capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != ROOT_VARIABLE})
    assert proc.returncode == 0, proc.stderr
    assert "seed: 4242" in proc.stdout
