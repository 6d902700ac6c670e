"""The DataModule (data.batching's batches, a DataLoader per epoch, over DDP processes) and `load_encoded`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from lyricist.data.batching import (check_enough_tokens, consecutive_batches, num_batches, random_batches,
                                    variable_lengths)
from lyricist.data.prepared import check_record
from lyricist.data.vocab import Vocab, load_ids
from lyricist.settings import DataSettings


class _BatchStream(IterableDataset):
    """A batching generator, re-iterable (a pass an epoch), of ready (X, Y) batches that the DataLoader must not
    reshuffle (`batch_size=None`): consecutive batch i+1 continues batch i row by row."""

    def __init__(self, make_iterator: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]],
                 length: int | None = None):
        self.make_iterator, self.length = make_iterator, length

    def __iter__(self):
        return self.make_iterator()

    def __len__(self) -> int:  # lets the progress bar show "12/50" instead of "12/?"
        if self.length is None:  # variable BPTT: epochs differ, Lightning (sized_len: None) reads each to its end
            raise TypeError("a variable-length stream has no length")
        return self.length


class LyricsDataModule(pl.LightningDataModule):
    def __init__(self, train_ids: torch.Tensor, val_ids: torch.Tensor, batch_size: int, num_steps: int,
                 sampling: str = "consecutive", eval_batch_size: int = 8, seed: int = 0,
                 variable_length: bool = False):
        super().__init__()  # sampling and variable_length: checked by lyricist.settings
        self.train_ids, self.val_ids = train_ids, val_ids
        self.batch_size, self.num_steps, self.sampling = batch_size, num_steps, sampling
        self.eval_batch_size, self.seed, self.variable_length = eval_batch_size, seed, variable_length
        self.epochs_drawn = 0  # random shuffles (or variable lengths) drawn so far; saved in checkpoints

    def rows_of_this_process(self, batch_size: int) -> slice | None:
        """Under DDP, this process's rows of every batch: rank r takes rows r, r+W, ..., so a consecutive stream stays
        with its process (and state); never a shuffled DistributedSampler, which would break the row continuity."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if world == 1:
            return None
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} does not split over {world} processes: "
                             f"use a multiple of {world}")
        return slice(self.trainer.global_rank, None, world)

    def _epoch_generator(self) -> torch.Generator:
        """A new generator each epoch, the same on every process, from seed + epochs drawn: a counter in the
        checkpoint, as the trainer's current_epoch is not yet advanced when Lightning builds the iterator."""
        generator = torch.Generator().manual_seed(self.seed + self.epochs_drawn)
        self.epochs_drawn += 1
        return generator

    def _train_batches(self):
        rows = self.rows_of_this_process(self.batch_size)
        if self.sampling == "consecutive":
            lengths = (variable_lengths(len(self.train_ids), self.batch_size, self.num_steps,
                                        self._epoch_generator()) if self.variable_length else None)
            return consecutive_batches(self.train_ids, self.batch_size, self.num_steps, rows=rows, lengths=lengths)
        # Each process keeps its own rows of each batch of the shared shuffle.
        batches = random_batches(self.train_ids, self.batch_size, self.num_steps, self._epoch_generator())
        return batches if rows is None else ((x[rows], y[rows]) for x, y in batches)  # (B/W, T)

    def state_dict(self) -> dict:
        return {"epochs_drawn": self.epochs_drawn}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs_drawn = state_dict["epochs_drawn"]

    def train_dataloader(self) -> DataLoader:
        length = (None if self.variable_length else
                  num_batches(len(self.train_ids), self.batch_size, self.num_steps, self.sampling))
        return DataLoader(_BatchStream(self._train_batches, length), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        rows = self.rows_of_this_process(self.eval_batch_size)
        length = num_batches(len(self.val_ids), self.eval_batch_size, self.num_steps, "consecutive")
        stream = _BatchStream(lambda: consecutive_batches(self.val_ids, self.eval_batch_size, self.num_steps, rows=rows),
                              length)
        return DataLoader(stream, batch_size=None)


def load_encoded(data_dir: Path, data: DataSettings, eval_batch_size: int) -> tuple[Vocab, dict]:
    """The vocab stage's vocabulary and train/val ids, refused with the fix when missing, stale, or too short."""
    files = [data_dir / name for name in ("vocab.json", "train.npy", "val.npy")]
    if missing := [str(f) for f in files if not f.is_file()]:
        raise FileNotFoundError(
            f"encoded data missing: {', '.join(missing)}. Prepare it first: "
            "`dvc pull data/raw/*.dvc && dvc repro vocab` (or `dvc exp run -S data=<corpus>` for "
            "another corpus)")
    vocab = Vocab.load(data_dir / "vocab.json")
    check_record(data_dir, data.model_dump())
    if vocab.tokenizer != data.tokenizer:
        raise ValueError(
            f"{data_dir / 'vocab.json'} is a {vocab.tokenizer}-level vocabulary but data.tokenizer="
            f"{data.tokenizer}. Prepare the data for this config through DVC (`dvc exp run -S "
            f"data.tokenizer={data.tokenizer}`) or set data.tokenizer={vocab.tokenizer}")
    splits = {name: load_ids(data_dir / f"{name}.npy") for name in ("train", "val")}
    check_enough_tokens(len(splits["train"]), data.batch_size, data.num_steps, "train split", sampling=data.sampling)
    check_enough_tokens(len(splits["val"]), eval_batch_size, data.num_steps, "val split", sampling="consecutive")
    return vocab, splits
