"""Multi-process (DDP, gloo on CPU) training: every stream once per epoch, same loss as one process."""

import csv
import functools

import pytest
import pytorch_lightning as pl
import torch

from conftest import TINY, compose_config, empty_store, with_data
from conftest import make_lit, make_lm
from lyricist.models import RecurrentLM
from conftest import train
from lyricist.training.datamodule import LyricsDataModule
from lyricist.training.module import LitLanguageModel
from lyricist.data.vocab import Vocab

pytestmark = pytest.mark.slow


class RecordRows(pl.Callback):
    """Writes, per process, the first token of every row of every training batch."""

    def __init__(self, directory):
        self.directory = directory

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        path = self.directory / f"rank{trainer.global_rank}.txt"
        with open(path, "a") as f:
            f.write(f"{trainer.current_epoch} {batch_idx} {' '.join(map(str, batch[0][:, 0].tolist()))}\n")


def _rows_seen(directory, ranks):
    seen = {}
    for rank in ranks:
        for line in (directory / f"rank{rank}.txt").read_text().splitlines():
            epoch, batch, *firsts = map(int, line.split())
            seen.setdefault((epoch, batch), []).extend(firsts)
    return seen


@pytest.mark.parametrize("sampling", ["consecutive", "random"])
def test_two_processes_see_every_stream_exactly_once_per_epoch(sampling, tmp_path):
    vocab = Vocab.build("".join(chr(0x4E00 + i) for i in range(50)))
    # Token i at position i (mod vocab) makes a row's first token identify its stream.
    ids = torch.arange(8 * (4 * 5 + 1)) % len(vocab)

    def fit(devices, directory):
        directory.mkdir()
        lit = make_lit(make_lm(len(vocab), hidden_size=8), vocab, lr=0.1, sampling=sampling)
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=devices,
                             strategy="ddp_spawn" if devices > 1 else "auto",
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[RecordRows(directory)])
        trainer.fit(lit, datamodule=LyricsDataModule(ids, ids, 8, 5, sampling, eval_batch_size=4))

    fit(1, tmp_path / "one")
    fit(2, tmp_path / "two")
    single, split = _rows_seen(tmp_path / "one", [0]), _rows_seen(tmp_path / "two", [0, 1])
    assert len(single) == 2 * 4  # 2 epochs x 4 batches
    for key, rows in single.items():
        assert sorted(split[key]) == sorted(rows), f"epoch/batch {key}: streams differ"
        assert len(set(split[key])) == len(split[key]) == 8  # each stream once, by one process
    ranks_of = {}
    for rank in (0, 1):
        for line in (tmp_path / "two" / f"rank{rank}.txt").read_text().splitlines():
            _, _, *firsts = map(int, line.split())
            ranks_of.setdefault(rank, []).append(firsts)
    if sampling == "consecutive":  # a stream stays with its process: row r of batch i+1 continues it
        for rank, batches in ranks_of.items():
            for before, after in zip(batches, batches[1:4]):
                assert all((a - b) % len(vocab) == 5 for a, b in zip(after, before))


def test_ddp_spawn_training_matches_one_process(tiny_data, tmp_path, _empty_store):
    overrides = TINY + ["model.dropout=0", "model.weight_drop=0", "model.embedding_row_dropout=0",
                        "train.early_stopping_patience=null",
                        f"logger.tracking_uri={empty_store(_empty_store, tmp_path / 'mlflow.db')}"]
    one = train(with_data(compose_config(overrides), tiny_data), tmp_path / "one")
    two = train(with_data(compose_config(overrides + ["trainer=ddp_spawn"]), tiny_data), tmp_path / "two")

    def rows(name):
        with open(tmp_path / name / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))

    assert len(rows("one")) == len(rows("two")) == 2
    for a, b in zip(rows("one"), rows("two")):
        for key in ("train/loss", "val/loss", "grad_norm"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4), key
    assert two["val/ppl"] == pytest.approx(one["val/ppl"], rel=1e-4)
    assert (tmp_path / "two" / "checkpoints" / "best.ckpt").is_file()
