"""Locked (variational) dropout: one mask per sequence, shared over time; off in eval mode."""

import pytest
import torch
from torch import nn

from conftest import make_lm
from lyricist.models import RecurrentLM
from lyricist.models.regularisers.locked_dropout import LockedDropout


@pytest.mark.parametrize("time_dim", [0, 1])
def test_one_mask_shared_over_time_with_inverted_scaling(time_dim):
    torch.manual_seed(0)
    dropout = LockedDropout(0.5, time_dim=time_dim).train()
    x = torch.ones(7, 7, 64)  # (T, B, D) or (B, T, D): all ones, so the output is the mask itself
    y = dropout(x)
    # Kept units are scaled by 1 / (1 - p) = 2, dropped ones are 0, nothing else.
    assert set(y.unique().tolist()) == {0.0, 2.0}
    # Every slice along time is the same mask ...
    first = y.select(time_dim, 0)
    for t in range(x.shape[time_dim]):
        torch.testing.assert_close(y.select(time_dim, t), first, atol=0, rtol=0)
    # ... but each sequence (the other leading dim, now dim 0 of `first`: (B, D)) gets its own.
    assert not torch.equal(first[0], first[1])
    # About half the units are dropped.
    assert 0.35 < (first == 0).float().mean().item() < 0.65


def test_identity_in_eval_mode_and_at_rate_zero():
    x = torch.randn(5, 3, 4)
    assert LockedDropout(0.5).eval()(x) is x
    assert LockedDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        LockedDropout(1.0)


def test_language_model_uses_locked_dropout_when_asked():
    torch.manual_seed(0)
    model = make_lm(11, "lstm", hidden_size=8, num_layers=2, embedding_size=6, dropout=0.5,
                        locked_dropout=True)
    assert isinstance(model.embedding_dropout, LockedDropout) and model.embedding_dropout.time_dim == 0
    assert isinstance(model.dropout, LockedDropout) and model.dropout.time_dim == 0
    assert isinstance(model.output_dropout, LockedDropout) and model.output_dropout.time_dim == 1  # (B, T, H)
    assert isinstance(make_lm(11, dropout=0.5).dropout, nn.Dropout)  # the default stays per-step
    ids = torch.randint(11, (3, 5))
    # The head's input (B, T, H): a unit dropped at one step is dropped at every step of its row.
    model.train()
    hidden, _ = model.features(ids)
    dropped = hidden == 0  # (B, T, H)
    assert dropped.any()
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    # Eval mode: deterministic; rebuilt from its config, it is locked again.
    model.eval()
    torch.testing.assert_close(model(ids)[0], model(ids)[0], atol=0, rtol=0)
    assert isinstance(RecurrentLM(model.config, model.vocab_size).dropout, LockedDropout)
    # The literal reference path has no sequence to share a mask over in train mode.
    torch.testing.assert_close(model.forward_reference(ids)[0], model(ids)[0])
    with pytest.raises(ValueError, match="model.eval"):
        model.train().forward_reference(ids)
