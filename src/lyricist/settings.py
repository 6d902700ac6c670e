"""Every setting of lyricist, declared once: its type, bounds and a one-line description; conf/ holds
the values. The entry layer checks a whole composition with `section(Settings, values)` before
anything is read or written; the library takes the typed sections. A bad value is one line naming
its key, the value and what is allowed. Pydantic v2, not Hydra structured configs: the bounds, rules
and messages are ours, and dataclasses in Hydra's ConfigStore cannot express ranges.
"""

from __future__ import annotations

import difflib
import functools
import json
import typing
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from lyricist.data.corpus import normal_name

# Shorthands for the common kinds of value.
Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]  # [0, 1): a dropout rate


def _f(description: str, **bounds: Any) -> Any:
    return Field(description=description, **bounds)


class Section(BaseModel):
    """A section of the config: unknown keys are refused (a typo names the key it meant); values
    are not converted between types (`abc`, `true` or `1.5` for a count are refused)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class PathsSettings(Section):
    """Where things are, relative to the project root (dvc.yaml reads them from params.yaml)."""

    root: str | None = _f("project root; null: the folder holding conf/config.yaml, from the working directory up ($LYRICIST_ROOT)")
    interim: str = _f("unzip's output: the raw corpus as UTF-8 text")
    processed: str = _f("preprocess's output: {train,val,test}.txt")
    encoded: str = _f("vocab's output: vocab.json, {train,val,test}.npy, prepared_with.json")
    models: str = _f("train's output: checkpoints/ and metrics.csv")
    ngram: str = _f("baseline's fitted Kneser-Ney model, which evaluate reuses")
    reports: str = _f("metrics and samples of the baseline and evaluate stages")


class SplitFiles(Section):
    """A corpus that comes split: its three files."""

    train: str = _f("the train file (or zip member) inside data.raw_path")
    val: str = _f("the validation file")
    test: str = _f("the test file")

    @model_validator(mode="after")
    def _three_files(self) -> SplitFiles:
        example = "data.split_files='{train: ptb.train.txt, val: ptb.valid.txt, test: ptb.test.txt}'"
        names = self.model_dump()  # {train, val, test}
        for split, name in names.items():
            if not name.strip() or PurePath(name).is_absolute() or ".." in PurePath(name).parts:
                raise ValueError(f"data.split_files.{split}={name!r} is not allowed: use a relative path inside the "
                                 "folder or .zip at data.raw_path (DVC tracks that as the stage's dependency), "
                                 f"e.g. {example}")
        # Compared as paths, not strings: ./ptb.train.txt, ptb.train.txt/ and a//b name what ptb.train.txt and a/b do.
        if len({normal_name(name) for name in names.values()}) != len(names):
            raise ValueError(f"data.split_files={names!r} names one file for two splits: train, val and test "
                             f"must be three files, e.g. {example}")
        return self


class DataSettings(Section):
    """The corpus (conf/data/): reading, cleaning, splitting, the vocabulary and the batches."""

    name: str = _f("the corpus' name: its outputs go to data/{interim,processed,encoded}/<name>", pattern=r"^[A-Za-z0-9_.-]+$")
    raw_path: str = _f("the raw corpus: a UTF-8 text file, a .zip holding one, or (split_files) a folder or .zip")
    split_files: SplitFiles | None = _f("null: one file, split by position | {train, val, test}: files inside raw_path, used as given")
    max_raw_bytes: Count = _f("unzip: refuse a corpus (or zip member) of more bytes than this", le=10**10)
    max_compression_ratio: float = _f("unzip: refuse a zip member that expands more times than this (a zip bomb)", gt=1, allow_inf_nan=False)
    newline: Literal["keep", "space"] = _f("keep: '\\n' is a token | space: lines run on")
    lowercase: bool = _f("lowercase the text before the vocabulary is built")
    max_chars: Count | None = _f("keep only the first N characters (of each split file); null: all")
    val_fraction: Fraction = _f("the val split's share, contiguous by position (0 with split_files)")
    test_fraction: Fraction = _f("the test split's share, after val (0 with split_files)")
    tokenizer: Literal["char", "word"] = _f("char: one token per character | word: whitespace-separated words")
    min_freq: Count = _f("tokens seen fewer times in train map to <unk>")
    max_vocab_size: Count | None = _f("keep the N most frequent tokens of train (+ <unk>); null: no cap", le=2**31 - 1)
    max_unk_rate: Annotated[float, Field(ge=0, le=1)] | None = _f("vocab: refuse val or test when more than this is <unk> (tokens train lacks); null: no limit")
    min_vocab_size: Count = _f("vocab: refuse a train vocabulary of fewer tokens besides <unk> (a degenerate corpus); 1: allow any")
    sampling: Literal["random", "consecutive"] = _f("the seeds' two iterators: random windows, or streams carried across batches")
    batch_size: Count = _f("sequences per training batch", le=4096)
    num_steps: Count = _f("time steps per batch (truncated BPTT length)", le=100000)
    variable_length: bool = _f("consecutive batches vary in length around num_steps, the lr scaled by it (AWD-LSTM)")
    prefixes: list[str] = _f("what the per-epoch and evaluate samples start from", min_length=1)

    @model_validator(mode="after")
    def _rules(self) -> DataSettings:
        if self.variable_length and self.sampling != "consecutive":
            raise ValueError("data.variable_length=True needs data.sampling=consecutive (variable-length batches "
                             "are consecutive ones): set data.sampling=consecutive or data.variable_length=false")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"data.val_fraction + data.test_fraction = {self.val_fraction + self.test_fraction:g} "
                             "leaves no train split: keep their sum below 1, e.g. 0.05 each")
        if self.split_files is not None and (self.val_fraction or self.test_fraction):
            raise ValueError(f"data.val_fraction={self.val_fraction} and data.test_fraction={self.test_fraction} with "
                             "data.split_files: a corpus that comes split is never re-split. Use 0: set "
                             "data.val_fraction=0 and data.test_fraction=0")
        if self.split_files is None and not (self.val_fraction and self.test_fraction):
            raise ValueError("data.val_fraction and data.test_fraction must be > 0 for a corpus split by "
                             "position (e.g. 0.05 each); a corpus that comes split sets data.split_files")
        return self


class ModelSettings(Section):
    """The model's whole contract (nanoGPT's GPTConfig): RecurrentLM(settings, vocab_size)
    builds it and a checkpoint stores it. Defaults: a plain one-layer LSTM, one-hot input, no dropout."""

    cell: Literal["rnn", "rnn_relu", "gru", "lstm"] = _f("the hand-written cell: rnn (tanh) | rnn_relu | gru | lstm", default="lstm")
    # Upper bounds: past them a run needs many GB or hours (an LSTM layer of 4096 is 134M weights).
    hidden_size: Count = _f("hidden units per layer", default=256, le=4096)
    num_layers: Count = _f("stacked recurrent layers", default=1, le=16)
    embedding_size: Count | None = _f("embedding width; null: one-hot input, as the seeds", default=None, le=4096)
    dropout: Fraction = _f("between stacked layers, and the default of the next two", default=0.0)
    embedding_dropout: Fraction | None = _f("on the embedding output; null: = dropout", default=None)
    output_dropout: Fraction | None = _f("before the head; null: = dropout", default=None)
    locked_dropout: bool = _f("one dropout mask per sequence (locked/variational), not per step", default=False)
    weight_drop: Fraction = _f("DropConnect on every layer's hidden-to-hidden weights, one mask per batch; 0: off", default=0.0)
    embedding_row_dropout: Fraction = _f("drop whole tokens (rows of the input table) for a batch; 0: off", default=0.0)
    ar_alpha: Annotated[float, Field(ge=0, allow_inf_nan=False)] = _f("AR: + alpha * mean(h^2) of the last layer's dropped output; 0: off", default=0.0)
    tar_beta: Annotated[float, Field(ge=0, allow_inf_nan=False)] = _f("TAR: + beta * mean((h_t - h_{t-1})^2) of its raw output; 0: off", default=0.0)
    tie_weights: bool = _f("the head shares the embedding matrix (needs embedding_size = hidden_size)", default=False)
    init: Literal["normal", "uniform", "torch"] = _f("normal: N(0, scale^2) (the seeds) | uniform: U(-scale, scale) | torch: torch.nn's", default="normal")
    init_scale: Positive = _f("the scale of init normal/uniform", default=0.01, le=10)
    forget_bias: float | None = _f("lstm: the forget gate's starting bias (e.g. 1.0); null: from init", default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _rules(self) -> ModelSettings:
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ValueError(
                f"model.tie_weights=True shares the embedding ({self.embedding_size}) with the head "
                f"({self.hidden_size}): set model.embedding_size={self.hidden_size} or model.tie_weights=false")
        if self.forget_bias is not None and self.cell != "lstm":
            raise ValueError(f"model.forget_bias is for model.cell=lstm (it has a forget gate), got "
                             f"model.cell={self.cell}: set model.forget_bias=null")
        return self


_NOT_ARGUMENTS = {"target", "partial", "interval", "monitor", "scheduler"}  # ours, not the class's


class Built(Section):
    """A section that names a class by `_target_` and holds its arguments: those declared here are
    typed and bounded (what torch leaves unchecked), the others pass through; every one must be an
    argument of the class (an unknown one is refused, naming the nearest)."""

    model_config = ConfigDict(extra="allow")  # merged with Section's

    def arguments(self) -> dict[str, Any]:
        """The class's keyword arguments: the set ones (a declared argument left null is the class's default)."""
        return {k: v for k, v in self.model_dump(exclude=_NOT_ARGUMENTS).items() if v is not None}

    def built_class(self, prefix: str) -> Any:
        """The class `_target_` names, each argument checked against its signature."""
        import importlib
        import inspect
        module, _, name = (self.target or "").rpartition(".")
        try:
            found = importlib.import_module(module)
        except (ImportError, ValueError):
            raise ValueError(f"{prefix}._target_={self.target!r}: no module {module!r}") from None
        cls = getattr(found, name, None)
        if not isinstance(cls, type):
            near = difflib.get_close_matches(name, dir(found), n=1)
            raise ValueError(f"{prefix}._target_={self.target!r} is no class" + (f": did you mean {module}.{near[0]}?" if near else ""))
        parameters = inspect.signature(cls).parameters.values()
        takes = [p.name for p in parameters  # what we pass is no setting
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("params", "optimizer")]
        for key in self.arguments() if all(p.kind != p.VAR_KEYWORD for p in parameters) else ():  # **kwargs: built to tell
            if key not in takes:
                near = difflib.get_close_matches(key, takes, n=1)
                raise ValueError(f"{prefix}.{key}: unexpected keyword argument {key!r} of {self.target}"
                                 + (f": did you mean {prefix}.{near[0]}?" if near else f" (it takes {', '.join(takes)})"))
        return cls


def _increasing(milestones: list[int]) -> list[int]:
    if any(a >= b for a, b in zip(milestones, milestones[1:])):
        raise ValueError(f"optim.scheduler.milestones={milestones} is not allowed: use increasing intervals (epochs), e.g. [10, 20]")
    return milestones


class SchedulerSettings(Built):
    """optim/scheduler: any torch.optim.lr_scheduler by _target_, its arguments beside these."""

    target: str | None = _f("a torch.optim.lr_scheduler class (torch.optim.lr_scheduler.StepLR | ...); null: a constant lr", alias="_target_")
    partial: bool = _f("true: the optimizer is passed at build time", alias="_partial_", default=True)
    interval: Literal["epoch", "step"] = _f("step the schedule after every epoch or every optimizer step")
    monitor: Literal["val/ppl"] | None = _f("the metric a ReduceLROnPlateau schedule watches; null for the others")
    step_size: Count | None = _f("StepLR: intervals between two cuts of the lr", default=None)
    milestones: Annotated[list[Count], AfterValidator(_increasing)] | None = _f("MultiStepLR: the increasing intervals at which the lr is cut", default=None, min_length=1)
    gamma: Positive | None = _f("StepLR, MultiStepLR, ExponentialLR: the lr's factor at each cut", default=None)
    T_max: Count | None = _f("CosineAnnealingLR: intervals of the half cosine", default=None)
    patience: NonNegative | None = _f("ReduceLROnPlateau: intervals without a better val/ppl before a cut", default=None)


class OptimSettings(Built):
    """The optimizer (conf/optim/) by _target_, its arguments beside these, and its lr schedule (conf/optim/scheduler/)."""

    target: str = _f("the optimizer class (torch.optim.Adam | torch.optim.SGD | ...)", alias="_target_")
    partial: bool = _f("true: the LightningModule passes the parameters", alias="_partial_")
    lr: Positive = _f("learning rate")
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = _f("L2 penalty (torch's weight_decay)")
    momentum: Fraction | None = _f("SGD's momentum (SGD only)", default=None)
    scheduler: SchedulerSettings = _f("the lr schedule (conf/optim/scheduler/)")

    def build(self, params) -> Any:
        """The optimizer over `params`, and its schedule (or None)."""
        optimizer = self.built_class("optim")(params, **self.arguments())
        schedule = self.scheduler
        return optimizer, schedule.built_class("optim.scheduler")(optimizer, **schedule.arguments()) if schedule.target else None

    @model_validator(mode="after")
    def _buildable(self) -> OptimSettings:
        """The optimizer and schedule built once over a dummy weight: a wrong class or argument
        fails here, in one line, not after the first epoch."""
        import torch
        schedule = self.scheduler
        try:
            self.build([torch.zeros(1, requires_grad=True)])
        except Exception as err:  # ImportError, TypeError (unknown argument), ValueError (torch's own)
            raise ValueError(f"optim ({self.target}, scheduler {schedule.target}) cannot be built: {str(err).rstrip('.')} "
                             "(check the class names and arguments under optim and optim.scheduler)") from None
        if schedule.target and schedule.target.endswith("ReduceLROnPlateau") and not schedule.monitor:
            raise ValueError("optim.scheduler ReduceLROnPlateau needs optim.scheduler.monitor=val/ppl")
        return self


_EPOCHS = ("is not allowed: use an integer >= 1, or -1 (no limit; then set +trainer.max_time, e.g. "
           "+trainer.max_time=00:02:00:00) (epochs to train)")


def _not_zero(epochs: int) -> int:  # a field's own rule, so that a search space's range is held to it too
    if epochs == 0:
        raise ValueError(f"trainer.max_epochs=0 {_EPOCHS}")
    return epochs


class TrainerSettings(Built):
    """pytorch_lightning.Trainer's arguments: these are checked, others pass through (+trainer.max_time=...)."""

    target: str = _f("the Trainer class", alias="_target_")
    max_epochs: Annotated[int, AfterValidator(_not_zero)] = _f("epochs to train; -1: no limit (then set +trainer.max_time)", ge=-1, le=100000)
    accelerator: str = _f("cpu | gpu | auto")
    devices: int | str | list[int] = _f("devices (processes with ddp) to use")
    deterministic: bool = _f("deterministic algorithms (reproducible runs)")
    log_every_n_steps: Count = _f("Lightning's step-logging interval")
    num_sanity_val_steps: NonNegative = _f("validation batches run before training")
    enable_progress_bar: bool = _f("the TQDM progress bar")
    limit_train_batches: Count | Annotated[float, Field(gt=0, le=1)] | None = _f("train on this many batches (or this share) per epoch; null: all")

    @model_validator(mode="after")
    def _rules(self) -> TrainerSettings:
        if self.max_epochs == -1 and not self.arguments().get("max_time"):
            raise ValueError(f"trainer.max_epochs=-1 {_EPOCHS}")
        self.built_class("trainer")
        return self

    def build(self, **kwargs: Any) -> Any:
        """The Trainer, with what the run adds (its loggers, callbacks, directory)."""
        return self.built_class("trainer")(**self.arguments(), **kwargs)


class LoggerSettings(Section):
    """MLflow tracking (conf/logger/)."""

    enabled: bool = _f("track the run in MLflow; false: only the per-epoch CSV")
    tracking_uri: str | None = _f("null: $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db")
    experiment_name: str = _f("the MLflow experiment", min_length=1)
    run_name: str | None = _f("null: '<cell> <sampling> h<hidden> <corpus>'")
    log_model: bool = _f("log the best checkpoint as an MLflow pyfunc model")
    serve_max_num_chars: Count = _f("the served model refuses a row asking for more tokens than this", le=100000)
    serve_max_seconds: Positive = _f("the served model stops a request running longer (HTTP 429)", le=3600)
    registered_model_name: str | None = _f("register each trained model as a version of this name (alias champion on the best val ppl of a corpus); null: none")
    system_metrics: bool = _f("MLflow's sampler logs CPU, memory, disk, network (and NVIDIA GPU) figures as system/*")


class TrainSettings(Section):
    """The training loop's own settings (lyricist.training.module)."""

    seed: NonNegative = _f("seeds torch, numpy and the batch order")
    clip_theta: Positive | None = _f("clip the gradients' global L2 norm to this; null: no clipping")
    loss_reduction: Literal["mean", "sum"] = _f("differentiate the mean loss, or the sum (the MXNet seed)")
    eval_batch_size: Count = _f("streams for val/test perplexity (state carried over the whole split)", le=65536)
    early_stopping_patience: NonNegative | None = _f("stop after N epochs without a better val/ppl; null: never")
    samples_every_n_epochs: Count = _f("log generated lyrics to MLflow every N epochs (and at the last)")
    divergence_factor: Annotated[float, Field(gt=1, allow_inf_nan=False)] | None = _f("stop when the loss exceeds N x its first value; null: only on NaN/inf")
    resume: str | None = _f("null: fresh | auto: continue from <output>/checkpoints/last.ckpt | a checkpoint path")
    overwrite: bool = _f("a fresh run may replace the run already in its directory")
    weight_averaging: Literal["nt"] | None = _f("nt: average the weights after every step once val/ppl stalls (NT-ASGD); null: off")
    averaging_patience: NonNegative = _f("nt: epochs without a better val/ppl before averaging starts (0: from the start)")

    @model_validator(mode="after")
    def _rules(self) -> TrainSettings:
        patience, waits = self.early_stopping_patience, self.averaging_patience
        if self.weight_averaging and patience is not None and waits and waits >= patience:
            raise ValueError(
                f"train.averaging_patience={waits} and train.early_stopping_patience={patience} do not go together: "
                "weight averaging would start only when early stopping ends the run: use a smaller "
                "train.averaging_patience than train.early_stopping_patience, or early_stopping_patience=null")
        return self


class BaselineSettings(Section):
    """The count-based baselines (the `baseline` stage): add-one unigram and Kneser-Ney."""

    max_order: Annotated[int, Field(ge=1, le=10)] = _f("Kneser-Ney orders 1..N (the cost grows with N)")
    discount_mode: Literal["modified", "single", "fixed"] = _f("modified: Chen & Goodman D1, D2, D3+ | single: Ney | fixed")
    fixed_discount: Annotated[float, Field(gt=0, lt=1)] = _f("the discount when discount_mode is fixed")


class EvaluateSettings(Section):
    """The `evaluate` stage beyond static perplexity: dynamic evaluation, the network learning from the split as it reads it."""

    dynamic_lrs: list[Positive] = _f("SGD rates tried beside 0 (no update), the best on val kept; []: none", max_length=20)
    dynamic_num_steps: Count = _f("tokens scored between two updates")
    dynamic_tune_tokens: Count | None = _f("the rate is chosen on this many val tokens; null: all of val")
    krause_lrs: list[Positive] = _f("Krause et al.'s rates tried beside 0, chosen on val; []: none", max_length=20)
    krause_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = _f("the pull back towards the trained weights")
    krause_eps: Positive = _f("added to the gradient rms before dividing by it")
    krause_stat_tokens: Count | None = _f("training tokens whose gradients give the rms; null: all of train")
    cache_size: Annotated[int, Field(ge=1, le=100000)] | None = _f("the neural cache's positions (Grave et al., 2017); null: no cache row")
    cache_thetas: list[Positive] = _f("the cache's flatness θ of exp(θ h_t·h_i) tried on val (λ too is chosen on val)", min_length=1, max_length=50)


class Decoding(Section):
    """How tokens are chosen after the prefix: the per-epoch samples, the evaluate stage,
    `lyricist-generate` and the served model all take one of these."""

    num_chars: Count = _f("tokens predicted after the prefix", default=200, le=1_000_000)
    strategy: Literal["greedy", "sample"] = _f("greedy: the argmax (the seeds) | sample", default="greedy")
    temperature: Positive = _f("sample: softmax(logits / temperature)", default=1.0)
    top_k: Count | None = _f("sample: only the k most likely tokens; null: all", default=None)
    top_p: Annotated[float, Field(gt=0, le=1)] | None = _f("sample: the nucleus, the fewest most likely tokens holding this mass; null: all", default=None)
    repetition_penalty: Annotated[float, Field(ge=1, allow_inf_nan=False)] = _f("CTRL's penalty on the last repetition_window tokens' logits (not whitespace); 1: off", default=1.0)
    repetition_window: Count = _f("tokens the repetition penalty looks back over", default=20)
    no_repeat_ngram: Count | None = _f("forbid repeating any n-gram of this many tokens; null: off", default=None)
    seed: NonNegative | None = _f("sample: the random generator's seed (+ i for the i-th prefix); null: unseeded", default=0)


class SpaceRule(Section):
    """One key of tune.space: a range {low, high[, log][, step]} or {choices: [...]}; `tied: key`:
    the value of that key when model.tie_weights is true (the embedding is then the head)."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: Annotated[int | float, Field(gt=0)] | None = None
    choices: list[Any] | None = None
    tied: str | None = None


class TuneSettings(Section):
    """The hyper-parameter search of `python -m lyricist.tune` (conf/tune/, docs/search.md), composed as `+tune=...`."""

    study_name: str = _f("one study per corpus; workers sharing it give the same name and storage", min_length=1)
    storage: str | None = _f("null: sqlite:///<project root>/optuna.db; any SQLAlchemy URL (postgresql://...) for many machines")
    n_trials: Count | None = _f("finished trials (complete or pruned) of the whole study, all workers; null: no limit", le=100000)
    timeout: Positive | None = _f("seconds, per worker: no new trial starts after this; null: no limit")
    seed: NonNegative = _f("TPE's seed; trial k draws from seed + k (two workers differ)")
    n_startup_trials: NonNegative = _f("random trials before TPE models the results")
    enqueue_recipe: bool = _f("a new study's first trial is conf's own recipe (its values of the space's keys): "
                              "the search cannot return worse than it")
    heartbeat_interval: Count = _f("seconds between a running trial's heartbeats in the storage")
    grace_period: Count = _f("a RUNNING trial silent this long was killed: failed and retried with its values")
    pruner: Literal["median", "hyperband"] | None = _f("prune hopeless trials on the per-epoch val/ppl; null: no pruning")
    pruner_startup_trials: NonNegative = _f("median: trials finished before any is pruned")
    pruner_warmup_epochs: NonNegative = _f("median: epochs of each trial never pruned")
    hyperband_min_epochs: Count = _f("hyperband: the smallest budget (epochs)")
    output_dir: str | None = _f("null: <project root>/outputs/tune/<study_name>/<its creation time>/; trial k in trial_<k>/")
    preset: str | None = _f("the best trial written as conf/experiment/<preset>.yaml; null: not written")
    preset_dir: str | None = _f("null: <project root>/conf/experiment")
    fixed: dict[str, Any] = _f("{dotted key: value} set on every trial, not searched")
    space: dict[str, SpaceRule | None] = _f("{dotted key: {low, high[, log][, step]} or {choices: [...]}[, tied: key]}; "
                                             "a key set to null is not searched")

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, SpaceRule | None]) -> dict[str, SpaceRule]:
        """Each key a setting, its values of that setting's type and inside its bounds (a float
        setting's range as floats, an int one's as ints: what the sampler draws)."""
        space = {key: _rule(key, rule) for key, rule in space.items() if rule is not None}
        if not space:
            raise ValueError("tune.space has no key left to search (every one null): give at least one, e.g. "
                             "'tune.space={optim.lr: {low: 0.001, high: 0.03, log: true}}'")
        return space


def _rule(key: str, rule: SpaceRule) -> SpaceRule:
    name = f"tune.space.{key}"
    info = field_of(key, name)
    if rule.tied:
        field_of(rule.tied, f"{name}.tied={rule.tied}")
    if rule.choices is not None:
        if not rule.choices or rule.low is not None or rule.high is not None:
            raise ValueError(f"{name}.choices={rule.choices}: give at least one value, and no low/high beside them")
    elif rule.low is None or rule.high is None or rule.low > rule.high:
        raise ValueError(f"{name}={rule.model_dump(exclude_defaults=True)} is not a range: give low <= high, e.g. "
                         "{low: 0.001, high: 0.03, log: true}, or choices: [...]")
    elif rule.log and (rule.low <= 0 or rule.step):
        raise ValueError(f"{name}: a log range needs low > 0 and no step, got low={rule.low}, step={rule.step}")
    if info is None or _inner(info.annotation):  # free-form (trainer.*, optim.scheduler.*): built with the trial
        return rule
    adapter = TypeAdapter(Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation,
                          config=ConfigDict(strict=True))

    def check(what: str, value: Any) -> Any:
        try:
            return adapter.validate_python(value)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            if first["type"] == "value_error":  # the field's own rule: its message names the key
                raise ValueError(f"{name}.{what}: {first['msg'].removeprefix('Value error, ')}") from None
            raise ValueError(_not_allowed(f"{name}.{what}", value, first, info)) from None

    if rule.choices is not None:
        return rule.model_copy(update={"choices": [check("choices", c) for c in rule.choices]})
    low, high = check("low", rule.low), check("high", rule.high)
    if isinstance(low, int) and not isinstance(rule.step or 1, int):
        raise ValueError(f"{name}.step={rule.step}: an integer setting's range takes an integer step")
    return rule.model_copy(update={"low": low, "high": high,
                                   "step": rule.step if isinstance(low, int) or rule.step is None else float(rule.step)})


class Settings(Section):
    """The whole composition (conf/config.yaml's sections; `tune` only under `python -m lyricist.tune`)."""

    paths: PathsSettings
    data: DataSettings
    model: ModelSettings
    optim: OptimSettings
    trainer: TrainerSettings
    logger: LoggerSettings
    train: TrainSettings
    baseline: BaselineSettings
    evaluate: EvaluateSettings
    generate: Decoding
    tune: TuneSettings | None = None

    @model_validator(mode="after")
    def _space_builds(self) -> Settings:
        """A searched argument of a class by _target_ (optim.*, optim.scheduler.*, trainer.*) is checked
        built with the rest of the recipe, at each end of its range and each choice: an argument the
        class lacks, or a value it refuses, is found here, not in trial 0."""
        for key, rule in self.tune.space.items() if self.tune else ():
            if issubclass(_model_at(Settings, key.split(".")[:-1]) or Section, Built):
                ends = [("choices", c) for c in rule.choices] if rule.choices is not None else [("low", rule.low),
                                                                                             ("high", rule.high)]
                for what, value in ends:
                    try:
                        section(Settings, nest({key: value}, self.model_dump(by_alias=True, exclude={"tune"})))
                    except ValueError as err:
                        raise ValueError(f"tune.space.{key}.{what}={value!r}: {err}") from None
        return self


def with_overrides(s: Settings, values: dict[str, Any]) -> Settings:
    """`s` with {dotted key: value} set (a search's trial, its tune.fixed), checked again whole."""
    return section(Settings, nest(values, s.model_dump(by_alias=True)))


def nest(values: dict[str, Any], data: dict | None = None) -> dict:
    """{dotted key: value} set into nested dicts: `data`, or a new one."""
    data = {} if data is None else data
    for key, value in values.items():
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node[part] = node[part] if isinstance(node.get(part), dict) else {}  # a leaf in the way is replaced
            node = node[part]
        node[last] = value
    return data


def value_at(s: Settings, key: str) -> Any:
    """The value of a dotted key (None where there is none)."""
    return functools.reduce(lambda node, part: node.get(part) if isinstance(node, dict) else None, key.split("."),
                            s.model_dump(by_alias=True))


def field_of(key: str, name: str | None = None) -> Any:
    """The declared field of a dotted key, None below a free-form node (trainer.*, optim.scheduler.*,
    tune.space.*); a key that is no setting is refused as `name` (default: the key), naming the nearest."""
    model, parts = Settings, key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(model)
        info = fields.get(part)
        if info and i == len(parts) - 1:
            return info
        if info and _inner(info.annotation):
            model = _inner(info.annotation)
        elif info and typing.get_origin(info.annotation) is dict or not info and model.model_config.get("extra") == "allow":
            return None
        else:
            raise ValueError(_not_a_setting(name or key, parts[:i], part, fields))


def section(model: type[Section], values: Any, prefix: str = "") -> Any:
    """`values` checked as `model` (a whole composition, or one section alone: a request's decoding
    fields); its first error as one line, the keys named from `prefix` (e.g. "data")."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(filter(None, [prefix, *loc]))
    if first["type"] == "value_error":  # a cross-field rule: its message names the keys
        raise ValueError(first["msg"].removeprefix("Value error, "))
    parent = _model_at(model, loc[:-1])
    if first["type"] == "extra_forbidden":
        raise ValueError(_not_a_setting(key, [p for p in [prefix, *loc[:-1]] if p], loc[-1], _fields(parent) if parent else {}))
    if first["type"] == "missing":
        raise ValueError(f"{key} is missing: add it to the config (docs/configuration.md lists every key)")
    info = parent.model_fields.get(loc[-1]) if parent and loc else None
    raise ValueError(_not_allowed(key, first.get("input"), first, info))


def _not_allowed(key: str, value: Any, first: dict, info: Any) -> str:
    """`key=value is not allowed: what is allowed (what it is)`, pydantic's error in our words (`use a value >= 1`)."""
    allowed = first["msg"].replace("Input should be", "use")
    for words, sign in (("greater than or equal to", ">="), ("less than or equal to", "<="), ("greater than", ">"),
                        ("less than", "<")):
        allowed = allowed.replace(f"use {words}", f"use a value {sign}")
    return f"{key}={value!r} is not allowed: {allowed}" + (f" ({info.description})" if info else "")


def _not_a_setting(key: str, where: list[str], name: str, fields: dict) -> str:
    """`key` refused, naming the nearest setting to `name` among `fields` (at `where`), else the
    section holding a setting of that very name (a setting that moved: train.ar_alpha is model.ar_alpha)."""
    near = difflib.get_close_matches(name, list(fields), n=1)
    moved = [f"{section}.{name}" for section, info in _fields(Settings).items()
             if _inner(info.annotation) and name in _fields(_inner(info.annotation))]
    guess = ".".join([*where, near[0]]) if near else moved[0] if moved else None
    return f"{key} is not a setting" + (f": did you mean {guess}?" if guess else "") + " (docs/configuration.md lists them all)"


def _inner(annotation: Any) -> type[BaseModel] | None:
    """The settings class inside an annotation (`SplitFiles | None` -> SplitFiles), if any."""
    return next((a for a in getattr(annotation, "__args__", (annotation,))
                 if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _model_at(root: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The settings class at a location below `root` (None where the location leaves the schema)."""
    model: type[BaseModel] | None = root
    for part in loc:
        fields = _fields(model) if model else {}
        model = _inner(fields[part].annotation) if part in fields else None
    return model


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """A settings class's fields by the names conf/ gives them (`_target_`, not `target`)."""
    return {info.alias or name: info for name, info in model.model_fields.items()}


# -- the configuration reference ----------------------------------------------------------------
def reference(defaults: dict) -> str:
    """docs/configuration.md: every key's type and bounds, default value (`defaults`) and description."""
    lines = ["# Configuration reference", "",
             "Written by `python -m lyricist.cli.settings > docs/configuration.md` from `src/lyricist/settings.py`",
             "(types, bounds, descriptions) and the default composition of `conf/` (values);",
             "tests/test_settings.py checks it is current. Override any key on the command line",
             "(`python -m lyricist.train model.hidden_size=512`) or with `dvc exp run -S`.", ""]
    for name, info in Settings.model_fields.items():
        model = _inner(info.annotation)
        lines += [f"## `{name}`", "", (model.__doc__ or "").strip().split("\n\n")[0].replace("\n    ", " "), "",
                  "| key | type | default | description |", "|---|---|---|---|"]
        lines += _rows(name, model, defaults.get(name, {})) + [""]
    return "\n".join(lines)


def _rows(prefix: str, model: type[BaseModel], values: dict) -> list[str]:
    """The table's rows of a section, a nested class's arguments (optim.scheduler) row by row."""
    rows = []
    for key, info in _fields(model).items():
        value = values.get(key, info.default)
        shown = json.dumps(value) if value is None or isinstance(value, bool) else value  # null, true, false
        nested = issubclass(_inner(info.annotation) or Section, Built)
        cells = [f"`{prefix}.{key}`", _type_name(info.annotation, info.metadata),
                 "below" if nested else f"`{shown}`", info.description or ""]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        if nested:
            rows += _rows(f"{prefix}.{key}", _inner(info.annotation), value)
    return rows


def _type_name(annotation: Any, metadata: list = ()) -> str:
    """A type in words: `int >= 1`, `float in [0, 1)`, `'char' or 'word'`, `... or null`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0], [*args[1:], *metadata])
    if origin in (typing.Union, __import__("types").UnionType):
        return " or ".join(_type_name(a, metadata) if a is not type(None) else "null" for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" + _bounds(metadata)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "{" + ", ".join(_fields(annotation)) + "}"
    return getattr(annotation, "__name__", str(annotation)) + _bounds(metadata)


def _bounds(metadata) -> str:
    items = [item for m in metadata for item in [m, *getattr(m, "metadata", [])]]  # a FieldInfo holds its bounds in .metadata
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >=", "max_length": "length <="}
    found = dict.fromkeys(f"{sign} {getattr(item, attr)}" for item in items for attr, sign in signs.items()
                          if getattr(item, attr, None) is not None)
    return " " + ", ".join(found) if found else ""
