"""The training loop's seed behaviour: carried + detached state, reset state, clipping; memory
that does not grow epoch over epoch."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import compose_config, make_lit, make_lm
from lyricist.cli.config import settings_of
from lyricist.data.batching import consecutive_batches
from lyricist.models import RecurrentLM
from lyricist.training.datamodule import LyricsDataModule
from lyricist.training.module import LitLanguageModel, detach_state
from lyricist.data.vocab import Vocab

VOCAB = Vocab.build("abcdefghij")


def _fit_recording_states(sampling: str, epochs: int = 2):
    """Train for real (Lightning Trainer) and record the state each training forward gets."""
    torch.manual_seed(0)
    ids = torch.randint(0, len(VOCAB), (4 * (5 * 6 + 1),))  # 5 batches either way
    model = make_lm(len(VOCAB), cell="lstm", hidden_size=8, embedding_size=4)
    seen = []

    train_objective = model.objective  # what training_step calls (head and loss fused)

    def recording_loss(ids, targets, state):
        if model.training:
            seen.append((lit.current_epoch, [s.clone() for s in state],
                         any(s.requires_grad or s.grad_fn is not None for s in state)))
        return train_objective(ids, targets, state)

    model.objective = recording_loss
    lit = make_lit(model, VOCAB, lr=0.5, clip_theta=1.0, sampling=sampling)
    data = LyricsDataModule(ids, ids, batch_size=4, num_steps=6, sampling=sampling, eval_batch_size=2)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(lit, datamodule=data)
    return seen


def test_consecutive_state_is_carried_detached_and_reset_each_epoch():
    seen = _fit_recording_states("consecutive")
    assert len(seen) == 2 * 5  # 5 batches of 4 streams x 6 steps per epoch
    for i, (epoch, state, has_history) in enumerate(seen):
        assert not has_history, f"batch {i}: the carried state still has autograd history"
        first_of_epoch = i == 0 or seen[i - 1][0] != epoch
        is_zero = all(torch.count_nonzero(s) == 0 for s in state)
        assert is_zero == first_of_epoch, f"batch {i}: state zero={is_zero}"


def test_random_sampling_starts_every_batch_from_zero():
    seen = _fit_recording_states("random", epochs=1)
    assert len(seen) == 5
    for _, state, has_history in seen:
        assert not has_history
        assert all(torch.count_nonzero(s) == 0 for s in state)


def test_carried_state_changes_the_loss():
    torch.manual_seed(0)
    model = make_lm(len(VOCAB), cell="rnn", hidden_size=8, init="torch")
    ids = torch.randint(0, len(VOCAB), (2 * 12 + 1,))
    (x1, _), (x2, y2) = list(consecutive_batches(ids, batch_size=2, num_steps=5))[:2]
    _, carried = model(x1, None)
    loss = lambda state: torch.nn.functional.cross_entropy(model(x2, state)[0].flatten(0, 1), y2.flatten())
    assert not torch.isclose(loss(detach_state(carried)), loss(None))


def seeds_grad_clipping(params, theta: float) -> float:
    """The seeds' grad_clipping, written out: one L2 norm over all gradients; when it exceeds
    theta every gradient is multiplied by theta / norm. The oracle for torch's clip_grad_norm_."""
    norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))
    if norm > theta:
        for p in params:
            p.grad.mul_(theta / norm)
    return norm


def _random_grads(scale: float):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
    for p in params:
        p.grad = torch.randn_like(p) * scale
    return params


@pytest.mark.parametrize("scale, theta", [(10.0, 2.0), (0.01, 5.0), (1.0, math.inf)])
def test_torch_clip_grad_norm_is_the_seeds_grad_clipping(scale, theta):
    """What the LightningModule calls (torch.nn.utils.clip_grad_norm_) equals the seeds' rule:
    the same norm returned, the same clipped gradients (to float rounding: torch divides by
    norm + 1e-6), small gradients left exactly as they were."""
    ours, oracle = _random_grads(scale), _random_grads(scale)
    before = torch.cat([p.grad.flatten() for p in ours])
    norm = float(torch.nn.utils.clip_grad_norm_(ours, theta))
    assert norm == pytest.approx(seeds_grad_clipping(oracle, theta), rel=1e-6)
    after = torch.cat([p.grad.flatten() for p in ours])
    assert torch.allclose(after, torch.cat([p.grad.flatten() for p in oracle]), rtol=1e-5, atol=0)
    if norm > theta:
        assert float(after.norm()) == pytest.approx(theta, rel=1e-5)
        assert torch.allclose(after, before * (theta / norm), rtol=1e-5)  # same direction
    else:
        assert torch.equal(after, before)


@pytest.mark.parametrize("override, message", [
    ("optim/scheduler=cosine +optim.scheduler.T_maxx=3", r"optim .*cannot be built: .*unexpected keyword argument 'T_maxx'"),
    ("optim.scheduler.factor=1.0", r"optim .*cannot be built: Factor should be < 1\.0"),
    ("optim.scheduler._target_=torch.optim.lr_scheduler.Nope", r"optim .*cannot be built"),
    ("optim.scheduler.monitor=null", r"ReduceLROnPlateau needs optim\.scheduler\.monitor=val/ppl"),
    ("optim.scheduler.interval=batch", r"optim\.scheduler\.interval='batch' is not allowed: use 'epoch' or 'step'"),
])
def test_bad_lr_schedule_settings_are_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        settings_of(compose_config(override.split()))


def test_plateau_schedule_state_is_in_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, len(VOCAB), (400,))
    lit = make_lit(make_lm(len(VOCAB), hidden_size=8), VOCAB, lr=0.1, scheduler={
        "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True, "interval": "epoch",
        "monitor": "val/ppl", "mode": "min", "factor": 0.25, "patience": 2})
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(lit, datamodule=LyricsDataModule(ids, ids[:100], batch_size=4, num_steps=5,
                                                 eval_batch_size=2))
    path = tmp_path / "plateau.ckpt"
    trainer.save_checkpoint(path)
    # weights_only: what lyricist.checkpoint loads must stay loadable with a scheduler in it
    [scheduler] = torch.load(path, weights_only=True)["lr_schedulers"]
    assert scheduler["factor"] == 0.25 and scheduler["patience"] == 2
    assert scheduler["best"] == pytest.approx(lit.epoch_metrics["val/ppl"])  # stepped on val ppl


MEMORY_PROBE = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import make_lit, make_lm
import json, resource, torch, pytorch_lightning as pl
from lyricist.models import RecurrentLM
from lyricist.training.datamodule import LyricsDataModule
from lyricist.training.module import LitLanguageModel
from lyricist.data.vocab import Vocab

class PeakRss(pl.Callback):
    peaks_mb = []
    def on_train_epoch_end(self, trainer, module):
        self.peaks_mb.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB -> MiB

vocab = Vocab.build("".join(chr(0x4E00 + i) for i in range(300)))
ids = torch.randint(0, len(vocab), (32 * 35 * 12 + 32,), generator=torch.Generator().manual_seed(0))
lit = make_lit(make_lm(len(vocab), cell="lstm", hidden_size=128, embedding_size=64), vocab, lr=1e-3,
               optimizer="torch.optim.Adam")
trainer = pl.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, callbacks=[PeakRss()],
                     enable_progress_bar=False, enable_model_summary=False)
trainer.fit(lit, datamodule=LyricsDataModule(ids, ids[:2000], 32, 35, "consecutive", 8))
print(json.dumps(PeakRss.peaks_mb))
"""


@pytest.mark.slow
def test_training_memory_does_not_grow_epoch_over_epoch():
    # A fresh process, so that peak RSS measures this training and nothing run before it.
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"peak RSS per epoch (MiB): {[round(p, 1) for p in peaks]}")
    growth = peaks[-1] - peaks[2]
    assert growth < 5, f"peak RSS grew {growth:.1f} MiB from epoch 3 to epoch 10: something keeps history"
