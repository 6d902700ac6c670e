"""The LightningModule: trains a plain `RecurrentLM` the way the seeds do.

The recurrent model itself (`lyricist.models.RecurrentLM`) knows nothing of Lightning;
this module adds what the seeds' training loop does around it:

- random sampling: a fresh zero state for every batch;
- consecutive sampling: the state is carried from batch i to batch i+1 (row r continues
  row r) and *detached* before each batch, so backpropagation stops at the batch border
  (truncated BPTT; Lightning 2.x has no `truncated_bptt_steps`, so we do it here);
- gradient clipping by the global L2 norm over all parameters (manual optimization,
  because Lightning refuses `gradient_clip_val` there and clips differently anyway);
- perplexity = exp(mean cross-entropy per token), train per epoch and val over the
  whole val stream with the state carried.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import pytorch_lightning as pl
import torch

from lyricist.data.batching import SAMPLING_MODES
from lyricist.data.vocab import Vocab
from lyricist.models import RecurrentLM
from lyricist.models.cells import State

LR_SCHEDULES = (None, "plateau")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; raised before the bad step updates anything."""


def check_lr_schedule(lr_schedule: str | None, lr_factor: float, lr_patience: int) -> None:
    """Refuse a learning-rate schedule setting that cannot work, naming the key and the fix."""
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown train.lr_schedule {lr_schedule!r}: use null (a constant lr) "
                         "or 'plateau' (multiply the lr by train.lr_factor when val perplexity "
                         "stops improving)")
    if not (isinstance(lr_factor, (int, float)) and 0.0 < lr_factor < 1.0):
        raise ValueError(f"train.lr_factor must lie strictly between 0 and 1 (the lr is multiplied "
                         f"by it on a plateau), got {lr_factor!r}: use e.g. 0.5")
    if isinstance(lr_patience, bool) or not isinstance(lr_patience, int) or lr_patience < 0:
        raise ValueError(f"train.lr_patience must be an integer >= 0 (epochs without a better val "
                         f"perplexity before the lr is lowered), got {lr_patience!r}: use e.g. 0")


def detach_state(state: State) -> State:
    """Cut the autograd history of a carried state (the seeds' `s.detach_()`)."""
    return tuple(s.detach() for s in state)


class LitLanguageModel(pl.LightningModule):
    def __init__(self, model: RecurrentLM, vocab: Vocab,
                 optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
                 clip_theta: float | None = 1.0, sampling: str = "consecutive",
                 divergence_factor: float | None = 3.0, seed: int = 0, loss_reduction: str = "mean",
                 lr_schedule: str | None = None, lr_factor: float = 0.5, lr_patience: int = 0):
        super().__init__()
        check_lr_schedule(lr_schedule, lr_factor, lr_patience)
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"unknown loss_reduction {loss_reduction!r}: use 'mean' or 'sum'")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling {sampling!r}: use one of {SAMPLING_MODES}")
        if clip_theta is not None and clip_theta <= 0:
            raise ValueError(f"clip_theta must be > 0 (or null for no clipping), got {clip_theta}")
        self.automatic_optimization = False  # we clip by global norm and carry state ourselves
        self.model, self.vocab = model, vocab
        self.make_optimizer = optimizer
        self.clip_theta, self.sampling = clip_theta, sampling
        self.divergence_factor, self.seed = divergence_factor, seed
        # "sum": the gradient of the summed (not averaged) loss over the B*T predictions, as
        # the MXNet seed's `loss.backward()` on a vector of losses gives; with clipping this
        # makes its lr 0.2 take steps of length lr*theta. Reported losses stay means.
        self.loss_reduction = loss_reduction
        # "plateau": multiply the lr by lr_factor when the epoch's val perplexity has not
        # improved for more than lr_patience epochs (ReduceLROnPlateau, stepped by hand below).
        self.lr_schedule, self.lr_factor, self.lr_patience = lr_schedule, lr_factor, lr_patience
        self.first_loss: float | None = None  # char-rnn's rule: stop when loss > 3x the first
        self.extra_checkpoint: dict = {}  # e.g. the MLflow run id, stored in every checkpoint
        self._train_state: State | None = None
        self._val_state: State | None = None
        self.epoch_metrics: dict[str, float] = {}

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.parameters())
        if self.lr_schedule is None:
            return optimizer
        # Returned to Lightning so that its state is saved in (and restored from) every checkpoint;
        # under manual optimization Lightning does not step it: see on_validation_epoch_end.
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.lr_factor, patience=self.lr_patience)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- training --------------------------------------------------------------------
    def on_train_epoch_start(self):
        self._train_state = None  # consecutive: reset once per epoch; random: every batch anyway
        self._sums = {"loss": 0.0, "tokens": 0, "grad_norm": 0.0, "batches": 0}
        # The lr this epoch trains with (the schedule may lower it at the epoch's validation).
        self._epoch_lr = self.optimizers().param_groups[0]["lr"]
        self._epoch_start = time.perf_counter()

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            # Dropout draws from torch's global RNG. Reseeding it from (seed, epoch) at the
            # first batch (after Lightning has built the epoch's iterator, which also draws
            # from it) makes a run resumed from a checkpoint draw the same masks as an
            # uninterrupted one.
            torch.manual_seed(self.seed + 1000 * self.current_epoch)
        ids, targets = batch
        if self.sampling == "random" or self._train_state is None:
            state = self.model.begin_state(ids.size(0), device=ids.device)
        else:
            state = detach_state(self._train_state)  # keep the values, drop the history
        # Mean cross-entropy over the B*T predictions, as the seeds' loss (head and loss fused).
        loss, self._train_state = self.model.loss(ids, targets, state)
        self._check_divergence(float(loss.detach()), batch_idx)

        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss * targets.numel() if self.loss_reduction == "sum" else loss)
        # The seeds' grad_clipping: one L2 norm over *all* gradients, all scaled by theta / norm
        # when it exceeds theta (torch's clip_grad_norm_ is that, tests/test_training.py shows
        # it); theta = inf measures the norm without clipping (clip_theta: null).
        theta = math.inf if self.clip_theta is None else self.clip_theta
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters(), theta))
        optimizer.step()

        n = targets.numel()
        self._sums["loss"] += float(loss.detach()) * n
        self._sums["tokens"] += n
        self._sums["grad_norm"] += grad_norm
        self._sums["batches"] += 1
        self.log("train/loss_step", loss, prog_bar=True, logger=False)
        return loss

    def _check_divergence(self, loss: float, batch_idx: int) -> None:
        if self.first_loss is None:
            self.first_loss = loss
        exploded = (self.divergence_factor is not None
                    and loss > self.divergence_factor * self.first_loss)
        if math.isfinite(loss) and not exploded:
            return
        what = "is not finite" if not math.isfinite(loss) else (
            f"exploded to more than {self.divergence_factor:g}x its first value {self.first_loss:.3f}")
        raise TrainingDiverged(
            f"training loss {loss:.4g} {what} at epoch {self.current_epoch}, batch {batch_idx} "
            f"(global step {self.global_step}). Lower the learning rate (optim.lr), clip harder "
            "(train.clip_theta), or check the data. The last good checkpoint is kept."
        )

    # -- validation: the whole val stream, state carried ------------------------------
    def on_validation_epoch_start(self):
        self._val_state = None
        self._val_sums = {"loss": 0.0, "tokens": 0}

    def validation_step(self, batch, batch_idx):
        ids, targets = batch
        state = self._val_state or self.model.begin_state(ids.size(0), device=ids.device)
        loss, self._val_state = self.model.loss(ids, targets, state)
        self._val_sums["loss"] += float(loss) * targets.numel()
        self._val_sums["tokens"] += targets.numel()

    def _sum_over_processes(self, *values: float) -> list[float]:
        """Sum per-process numbers over all DDP processes (a no-op for one process)."""
        total = self.trainer.strategy.reduce(
            torch.tensor(values, dtype=torch.float64, device=self.device), reduce_op="sum")
        return total.tolist()

    def on_validation_epoch_end(self):
        loss_sum, tokens = self._sum_over_processes(self._val_sums["loss"], self._val_sums["tokens"])
        val_loss = loss_sum / max(tokens, 1)
        self.epoch_metrics.update({"val/loss": val_loss, "val/ppl": math.exp(val_loss)})
        # In callback_metrics for ModelCheckpoint / EarlyStopping; the loggers get one
        # row per epoch from on_train_epoch_end instead.
        self.log("val/ppl", math.exp(val_loss), prog_bar=True, logger=False)
        if self.lr_schedule is not None and not self.trainer.sanity_checking:
            # The same summed val loss on every DDP process, so every process steps alike.
            self.lr_schedulers().step(math.exp(val_loss))

    def on_train_epoch_end(self):
        # Lightning 2.x runs the end-of-epoch validation before this hook, so the
        # epoch's train and val numbers are logged together, one row per epoch.
        s = self._sums
        # Gradients are all-reduced, so every process sees the same grad norm; loss and
        # tokens are per process and summed.
        loss_sum, tokens = self._sum_over_processes(s["loss"], s["tokens"])
        train_loss = loss_sum / max(tokens, 1)
        elapsed = time.perf_counter() - self._epoch_start
        self.epoch_metrics.update({
            "epoch": self.current_epoch, "train/loss": train_loss, "train/ppl": math.exp(train_loss),
            "tokens_per_sec": tokens / elapsed if elapsed > 0 else 0.0,
            "grad_norm": s["grad_norm"] / max(s["batches"], 1), "train/lr": self._epoch_lr})
        self.log("train/ppl", math.exp(train_loss), prog_bar=True, logger=False)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(dict(self.epoch_metrics), step=self.current_epoch)

    # -- checkpoints carry what is needed to rebuild the model -------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lyricist"] = {"model_config": dict(self.model.config), "vocab": self.vocab.to_dict(),
                                  **self.extra_checkpoint}
        checkpoint["lyricist_resume"] = {"first_loss": self.first_loss}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.first_loss = checkpoint.get("lyricist_resume", {}).get("first_loss")
