"""The training loop's seed behaviour: carried + detached state, reset state, clipping."""

import math

import pytest
import pytorch_lightning as pl
import torch

from lyricist.batching import consecutive_batches
from lyricist.models import RecurrentLM
from lyricist.training import LitLanguageModel, LyricsDataModule, clip_grad_global_norm, detach_state
from lyricist.vocab import Vocab

VOCAB = Vocab.build("abcdefghij")


def _fit_recording_states(sampling: str, epochs: int = 2):
    """Train for real (Lightning Trainer) and record the state each training forward gets."""
    torch.manual_seed(0)
    ids = torch.randint(0, len(VOCAB), (4 * (5 * 6 + 1),))  # 5 batches either way
    model = RecurrentLM(len(VOCAB), cell="lstm", hidden_size=8, embedding_size=4)
    seen = []

    def record(module, args):
        if module.training:
            state = args[1]
            seen.append((lit.current_epoch, [s.clone() for s in state],
                         any(s.requires_grad or s.grad_fn is not None for s in state)))

    model.register_forward_pre_hook(record)
    lit = LitLanguageModel(model, VOCAB, optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
                           clip_theta=1.0, sampling=sampling)
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
    model = RecurrentLM(len(VOCAB), cell="rnn", hidden_size=8, init="torch")
    ids = torch.randint(0, len(VOCAB), (2 * 12 + 1,))
    (x1, _), (x2, y2) = list(consecutive_batches(ids, batch_size=2, num_steps=5))[:2]
    _, carried = model(x1, None)
    loss = lambda state: torch.nn.functional.cross_entropy(model(x2, state)[0].flatten(0, 1), y2.flatten())
    assert not torch.isclose(loss(detach_state(carried)), loss(None))


def test_clipping_bounds_the_global_norm_and_keeps_the_direction():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
    for p in params:
        p.grad = torch.randn_like(p) * 10
    before = torch.cat([p.grad.flatten() for p in params])
    norm = clip_grad_global_norm(params, theta=2.0)
    after = torch.cat([p.grad.flatten() for p in params])
    assert norm == pytest.approx(float(before.norm()), rel=1e-6)
    assert float(after.norm()) == pytest.approx(2.0, rel=1e-6)
    assert torch.allclose(after, before * (2.0 / norm))  # same direction, global scale


def test_clipping_leaves_small_gradients_alone():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([0.1, 0.2, 0.2])
    assert clip_grad_global_norm([p], theta=5.0) == pytest.approx(0.3)
    assert torch.equal(p.grad, torch.tensor([0.1, 0.2, 0.2]))


def test_bad_settings_are_refused_before_training():
    model = RecurrentLM(len(VOCAB), hidden_size=4)
    with pytest.raises(ValueError, match="sampling"):
        LitLanguageModel(model, VOCAB, optimizer=torch.optim.SGD, sampling="shuffled")
    with pytest.raises(ValueError, match="clip_theta"):
        LitLanguageModel(model, VOCAB, optimizer=torch.optim.SGD, clip_theta=0)
