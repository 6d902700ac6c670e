"""Issue 33: nothing lost or misreported on the newer surfaces (the registry's champion, a full
disk, the served model's requests, the search's trial folders, DVC's hangs), each through the real
component: a registry in a SQLite store, a filesystem that fills, the pyfunc model as the scoring
server calls it (and `mlflow models serve`), Optuna storages, `dvc exp run`."""

import pytest
from mlflow.tracking import MlflowClient

from conftest import write_encoded, with_data
from lyricist.train import train

# Ten characters over and over: a model learns it in an epoch (val ppl near 1, below any lyric's).
EASY = "分开不分开我不能再想\n" * 120


@pytest.mark.slow
def test_a_model_of_other_data_never_takes_the_champion(tiny_cfg, tiny_data, tmp_path, capsys):
    """As the hostile run: data.raw_path left at its default, paths.encoded another text. The
    champion's identity is the data read, so the better number on other data does not move it."""
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "lyrics")
    client = MlflowClient(tiny_cfg.logger.tracking_uri)
    first = client.get_model_version_by_alias("lyricist", "champion")
    other = write_encoded(tmp_path / "other", EASY, val_fraction=0.2, test_fraction=0.1)
    capsys.readouterr()
    train(with_data(tiny_cfg, other), output_dir=tmp_path / "other-run")
    second = client.get_model_version("lyricist", "2")
    assert float(second.tags["val_ppl"]) < float(first.tags["val_ppl"])  # better, on other data
    assert second.tags["data_md5"] == first.tags["data_md5"]  # the same raw_path: DVC's hash alone cannot tell
    assert client.get_model_version_by_alias("lyricist", "champion").version == first.version
    assert "champion stays (version 1 was trained on other data (encoded_md5))" in capsys.readouterr().out

    # The champion's version deleted while an older one remains: the next version takes the free
    # alias, and the line says so rather than "(the first)".
    client.delete_model_version("lyricist", "1")
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "again")
    line = capsys.readouterr().out
    assert "registered lyricist version 3: champion is now this version (no version held it" in line
    assert "earlier versions 2 remain" in line and "(the first)" not in line
