"""The LightningModule: trains a plain `RecurrentLM` as the seeds' loop does (a zero state per random batch, or
the state carried over consecutive batches, detached: truncated BPTT, which Lightning 2.x lacks; clipping by the
global L2 norm: manual optimization, where Lightning refuses `gradient_clip_val`), and AWD-LSTM's training side
(Merity et al., 2018), off by default: NT-ASGD's weight averaging and the lr scaled by a variable batch length."""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch
from torch.optim.swa_utils import AveragedModel

from lyricist import errors
from lyricist.data.vocab import Vocab
from lyricist.evaluation.ppl import perplexity, why_not_finite
from lyricist.models import RecurrentLM
from lyricist.models.cells import State
from lyricist.settings import DataSettings, OptimSettings, TrainSettings

# metrics.csv's columns, in order, which every logger gets from on_train_epoch_end: a new one is computed there.
EPOCH_METRICS = ("epoch", "train/loss", "train/ppl", "val/loss", "val/ppl", "tokens_per_sec", "grad_norm", "train/lr")
AVERAGED_PREFIX = "averaged.module."  # LitLanguageModel.averaged.module is the averaged RecurrentLM
DIVERGED_FIX = ("Lower the learning rate (optim.lr) or model.init_scale, clip harder (train.clip_theta), or check "
                "the data. The last good checkpoint is kept.")


class TrainingDiverged(errors.UserError, RuntimeError):
    """The loss became NaN/inf or exploded; raised before the bad step updates anything."""


def detach_state(state: State) -> State:
    """Cut the autograd history of a carried state (the seeds' `s.detach_()`)."""
    return tuple(s.detach() for s in state)


class LitLanguageModel(pl.LightningModule):
    def __init__(self, model: RecurrentLM, vocab: Vocab, optim: OptimSettings, train: TrainSettings,
                 data: DataSettings):
        super().__init__()
        self.automatic_optimization = False  # we clip by global norm and carry state ourselves
        self.model, self.vocab = model, vocab
        self.optim, self.settings, self.data = optim, train, data
        # NT-ASGD (weight_averaging "nt"): once it starts, validation and checkpoints use the average.
        self.averaged: AveragedModel | None = None
        self._trigger = {"best": math.inf, "bad_epochs": 0}  # val/ppl seen by the trigger
        self.first_loss: float | None = None  # char-rnn's rule: stop when loss > 3x the first
        self.extra_checkpoint: dict = {}  # e.g. the MLflow run id, stored in every checkpoint
        self.epoch_metrics: dict[str, float] = {}

    @property
    def eval_model(self) -> RecurrentLM:
        """What validation, the samples and the checkpoints use: the average once averaging has started."""
        return self.model if self.averaged is None else self.averaged.module

    def _start_averaging(self) -> None:
        self.averaged = AveragedModel(self.model, device=self.device)  # a copy of the weights now
        self.averaged.requires_grad_(False)  # never trained, only averaged into

    def configure_optimizers(self):
        # self.model's, not self.parameters(): those include the averaged copy once it exists.
        optimizer, scheduler = self.optim.build(self.model.parameters())
        if scheduler is None:
            return optimizer
        # Returned to Lightning so that its state is saved in (and restored from) every checkpoint;
        # under manual optimization Lightning does not step it: _step and on_validation_epoch_end do.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.optim.scheduler.interval}}

    def _step_schedule(self, interval: str, val_ppl: float | None = None) -> None:
        """Step the lr schedule at its interval (ReduceLROnPlateau with the monitored val/ppl)."""
        schedule = self.optim.scheduler
        if schedule.target is None or schedule.interval != interval or self.trainer.sanity_checking:
            return
        scheduler = self.lr_schedulers()
        scheduler.step(val_ppl) if schedule.monitor else scheduler.step()

    def on_train_start(self):
        if self.settings.weight_averaging == "nt" and self.settings.averaging_patience == 0 and self.averaged is None:
            self._start_averaging()  # from the first step (a resumed run has its average already)

    def on_train_epoch_start(self):
        self._train_state = None  # consecutive: reset once per epoch; random: every batch anyway
        self._sums = {"loss": 0.0, "tokens": 0, "grad_norm": 0.0, "batches": 0}
        # The lr this epoch trains with (the schedule may lower it at the epoch's validation).
        self._epoch_lr = self.optimizers().param_groups[0]["lr"]
        self._epoch_start = time.perf_counter()

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            # Dropout draws from torch's global RNG: reseeded from (seed, epoch) at the first batch (after
            # Lightning built the epoch's iterator, which draws too), a resumed run draws an uninterrupted one's masks.
            torch.manual_seed(self.settings.seed + 1000 * self.current_epoch)
        ids, targets = batch
        if self.data.sampling == "random" or self._train_state is None:
            state = self.model.begin_state(ids.size(0), device=ids.device)
        else:
            state = detach_state(self._train_state)  # keep the values, drop the history
        # The mean cross-entropy over the B*T predictions (logged), and with AR/TAR what is differentiated.
        loss, objective, self._train_state = self.model.objective(ids, targets, state)
        self._check_divergence(float(loss.detach()), batch_idx)

        optimizer = self.optimizers()
        optimizer.zero_grad()
        # "sum": the summed loss's gradient, as the MXNet seed's `loss.backward()` on a vector of losses.
        self.manual_backward(objective * targets.numel() if self.settings.loss_reduction == "sum" else objective)
        # The seeds' grad_clipping: one L2 norm over *all* gradients (clip_grad_norm_); theta = inf only measures.
        theta = math.inf if self.settings.clip_theta is None else self.settings.clip_theta
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), theta))
        self._step(optimizer, ids.size(1))
        self._step_schedule("step")

        n = targets.numel()
        self._sums["loss"] += float(loss.detach()) * n
        self._sums["tokens"] += n
        self._sums["grad_norm"] += grad_norm
        self._sums["batches"] += 1
        self.log("train/loss_step", loss, prog_bar=True, logger=False)
        return loss

    def _step(self, optimizer, num_steps: int) -> None:
        """optimizer.step(), with the lr scaled by num_steps / data.num_steps for a variable-length batch
        (short batches weigh less; put back after), then the weights averaged in once averaging has started."""
        scale = num_steps / self.data.num_steps if self.data.variable_length else 1.0
        lrs = [group["lr"] for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr * scale
        optimizer.step()
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr  # what the schedule and the checkpoint see is the unscaled lr
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)  # running mean of the iterates since the start

    def _check_divergence(self, loss: float, batch_idx: int) -> None:
        if self.first_loss is None:
            self.first_loss = loss
        factor = self.settings.divergence_factor
        exploded = factor is not None and loss > factor * self.first_loss
        bad = why_not_finite(loss)  # NaN, inf, or past exp()'s range: with or without the factor
        if bad is None and not exploded:
            return
        what = f"exploded to more than {factor:g}x its first value {self.first_loss:.3f}" if exploded else bad
        raise TrainingDiverged(f"training loss {loss:.4g} {what} at epoch {self.current_epoch}, batch {batch_idx} "
                               f"(global step {self.global_step}). {DIVERGED_FIX}")

    def on_validation_epoch_start(self):
        self._val_state = None
        self._val_sums = {"loss": 0.0, "tokens": 0}

    def validation_step(self, batch, batch_idx):
        ids, targets = batch
        model = self.eval_model
        state = self._val_state or model.begin_state(ids.size(0), device=ids.device)
        loss, self._val_state = model.loss(ids, targets, state)
        self._val_sums["loss"] += float(loss) * targets.numel()
        self._val_sums["tokens"] += targets.numel()

    def _sum_over_processes(self, *values: float) -> list[float]:
        """Sum per-process numbers over all DDP processes (a no-op for one process)."""
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(total, reduce_op="sum").tolist()

    def on_validation_epoch_end(self):
        loss_sum, tokens = self._sum_over_processes(self._val_sums["loss"], self._val_sums["tokens"])
        val_loss = loss_sum / max(tokens, 1)
        if (bad := why_not_finite(val_loss)) is not None:  # before the epoch's checkpoint: the last good stays
            raise TrainingDiverged(f"validation loss {val_loss:.4g} {bad} at epoch {self.current_epoch}. {DIVERGED_FIX}")
        val_ppl = perplexity(val_loss)
        self.epoch_metrics.update({"val/loss": val_loss, "val/ppl": val_ppl})
        # For ModelCheckpoint / EarlyStopping; the loggers get their row from on_train_epoch_end.
        self.log("val/ppl", val_ppl, prog_bar=True, logger=False)
        # The same summed val loss on every DDP process, so every process steps alike.
        self._step_schedule("epoch", val_ppl)
        if self.settings.weight_averaging == "nt" and self.averaged is None and not self.trainer.sanity_checking:
            # NT-ASGD's non-monotonic trigger: averaging_patience epochs without a better val/ppl (alike everywhere)
            if val_ppl < self._trigger["best"]:
                self._trigger.update(best=val_ppl, bad_epochs=0)
            else:
                self._trigger["bad_epochs"] += 1
            if self._trigger["bad_epochs"] >= self.settings.averaging_patience:
                self._start_averaging()

    def on_train_epoch_end(self):
        # After the epoch's validation (Lightning 2.x): train and val numbers go out together, one row.
        s = self._sums
        # Gradients are all-reduced (every process has the same norm); loss and tokens are summed.
        loss_sum, tokens = self._sum_over_processes(s["loss"], s["tokens"])
        train_loss = loss_sum / max(tokens, 1)
        elapsed = time.perf_counter() - self._epoch_start
        self.epoch_metrics.update({
            "epoch": self.current_epoch, "train/loss": train_loss, "train/ppl": perplexity(train_loss),
            "tokens_per_sec": tokens / elapsed if elapsed > 0 else 0.0,
            "grad_norm": s["grad_norm"] / max(s["batches"], 1), "train/lr": self._epoch_lr})
        self.log("train/ppl", perplexity(train_loss), prog_bar=True, logger=False)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(dict(self.epoch_metrics), step=self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        model_config = {**self.model.config.model_dump(), "vocab_size": self.model.vocab_size}
        checkpoint["lyricist"] = {"model_config": model_config, "vocab": self.vocab.to_dict(),
                                  **self.extra_checkpoint}
        checkpoint["lyricist_resume"] = {"first_loss": self.first_loss}
        if self.settings.weight_averaging is not None:
            checkpoint["lyricist_resume"]["trigger"] = dict(self._trigger)
        if self.averaged is not None:
            # The file's model.* weights, those evaluate, generate and the MLflow model load, are the average;
            # the trained ones, which a resumed run continues, go beside them (n_averaged stays in the state_dict).
            weights = checkpoint["state_dict"]
            checkpoint["lyricist_resume"]["iterate"] = _pop_prefix(weights, "model.")
            weights.update({"model." + k: v for k, v in _pop_prefix(weights, AVERAGED_PREFIX).items()})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        resume = checkpoint.get("lyricist_resume", {})
        self.first_loss = resume.get("first_loss")
        self._trigger = dict(resume.get("trigger", self._trigger))
        if "iterate" in resume:
            # Before Lightning loads the state_dict: each set of weights back under its own name.
            weights = checkpoint["state_dict"]
            average = _pop_prefix(weights, "model.")
            weights.update({"model." + k: v for k, v in resume["iterate"].items()})
            if self.settings.weight_averaging is None:  # resumed with averaging switched off: drop it
                weights.pop("averaged.n_averaged", None)
                return
            if self.averaged is None:
                self._start_averaging()
            weights.update({AVERAGED_PREFIX + k: v for k, v in average.items()})


def _pop_prefix(weights: dict, prefix: str) -> dict:
    """Remove the entries whose key starts with `prefix` from `weights`; return them, unprefixed."""
    return {k[len(prefix):]: weights.pop(k) for k in [k for k in weights if k.startswith(prefix)]}
