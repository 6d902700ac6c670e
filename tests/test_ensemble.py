"""The ensemble averages its members' probabilities and answers like one model."""

import math

import pytest
import torch

from conftest import make_lm
from oracles import neural_perplexity as perplexity
from lyricist.models import RecurrentLM
from lyricist.models.ensemble import Ensemble


def members(vocab_size=11):
    torch.manual_seed(0)
    return [make_lm(vocab_size, cell="lstm", hidden_size=8, embedding_size=4, init="torch").eval(),
            make_lm(vocab_size, cell="gru", hidden_size=6, num_layers=2, init="torch").eval()]


def test_the_mixture_is_the_mean_of_the_members_probabilities():
    lstm, gru = members()
    ensemble = Ensemble([lstm, gru]).eval()
    ids = torch.randint(0, 11, (3, 7))
    log_probs, state = ensemble(ids)
    expected = (torch.softmax(lstm(ids)[0], -1) + torch.softmax(gru(ids)[0], -1)) / 2  # (B, T, V)
    torch.testing.assert_close(log_probs.exp(), expected)
    assert [s.shape for s in state] == [(1, 3, 8), (1, 3, 8), (2, 3, 6)]  # lstm (h, c), then gru (h,)


def test_the_flat_state_carries_each_member_over_chunks():
    ensemble = Ensemble(members()).eval()
    ids = torch.randint(0, 11, (2, 10))
    whole, _ = ensemble(ids)
    first, state = ensemble(ids[:, :4])
    second, _ = ensemble(ids[:, 4:], tuple(s.detach() for s in state))
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


def test_never_worse_than_the_geometric_mean_of_its_members():
    lstm, gru = members()
    ids = torch.randint(0, 11, (200,))
    mixed = perplexity(Ensemble([lstm, gru]), ids, 2, 5)
    assert mixed <= math.sqrt(perplexity(lstm, ids, 2, 5) * perplexity(gru, ids, 2, 5)) * (1 + 1e-9)


def test_members_must_share_a_vocabulary_size():
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble(members()[:1])
    with pytest.raises(ValueError, match="different sizes.*same prepared data"):
        Ensemble([members(11)[0], members(12)[1]])
