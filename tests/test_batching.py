import numpy as np
import pytest
import torch

from lyricist.data.batching import (
    check_enough_tokens,
    consecutive_batches,
    min_tokens,
    num_batches,
    random_batches,
    variable_lengths,
)
from lyricist.data.vocab import load_ids, save_ids

SEQ = torch.arange(30)  # the seeds' 0..29 example
B, T = 2, 3


def test_random_batches_follow_the_seed():
    batches = list(random_batches(SEQ, B, T, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 4  # num_examples = 29 // 3 = 9, epoch_size = 9 // 2 = 4
    starts = []
    for inputs, labels in batches:
        assert inputs.shape == labels.shape == (B, T)
        assert inputs.dtype == labels.dtype == torch.int64
        assert torch.equal(labels, inputs + 1)  # next token, for this 0..29 sequence
        for row in inputs:
            assert row[0] % T == 0  # windows start at multiples of num_steps
            assert torch.equal(row, torch.arange(row[0], row[0] + T))
            starts.append(int(row[0]))
    assert len(set(starts)) == 8  # 8 distinct, hence non-overlapping, windows
    assert max(starts) <= 24  # window 8 (24..26) is the last whose label fits


def test_random_batches_are_reproducible_with_a_seeded_generator():
    def run(seed):
        return [x.tolist() for x, _ in random_batches(SEQ, B, T, generator=torch.Generator().manual_seed(seed))]

    assert run(1) == run(1)
    assert any(run(1) != run(seed) for seed in range(2, 6))


def test_consecutive_batches_match_the_seed_exactly():
    batches = list(consecutive_batches(SEQ, B, T))
    assert len(batches) == 4  # batch_len = 15, epoch_size = (15 - 1) // 3 = 4
    expected_inputs = [
        [[0, 1, 2], [15, 16, 17]],
        [[3, 4, 5], [18, 19, 20]],
        [[6, 7, 8], [21, 22, 23]],
        [[9, 10, 11], [24, 25, 26]],
    ]
    for (inputs, labels), expected in zip(batches, expected_inputs):
        assert inputs.tolist() == expected
        assert labels.tolist() == [[v + 1 for v in row] for row in expected]
        assert inputs.dtype == labels.dtype == torch.int64
    # Row r of batch i+1 starts right where row r of batch i ended.
    for (previous, _), (following, _) in zip(batches, batches[1:]):
        assert torch.equal(following[:, 0], previous[:, -1] + 1)


def test_consecutive_batches_rows_keep_some_streams():
    all_rows = list(consecutive_batches(torch.arange(40), 4, 3))
    some_rows = list(consecutive_batches(torch.arange(40), 4, 3, rows=slice(1, None, 2)))
    assert len(all_rows) == len(some_rows)
    for (x_all, y_all), (x_some, y_some) in zip(all_rows, some_rows):
        assert torch.equal(x_some, x_all[1::2]) and torch.equal(y_some, y_all[1::2])


@pytest.mark.parametrize("n_tokens", [0, 1, 6, 7, 8, 29, 30, 31, 100, 1001])
@pytest.mark.parametrize("batch_size,num_steps", [(1, 1), (2, 3), (3, 5), (4, 7)])
def test_num_batches_matches_the_iterators(n_tokens, batch_size, num_steps):
    ids = torch.arange(n_tokens)
    assert num_batches(n_tokens, batch_size, num_steps, "random") == len(list(random_batches(ids, batch_size, num_steps)))
    assert num_batches(n_tokens, batch_size, num_steps, "consecutive") == len(
        list(consecutive_batches(ids, batch_size, num_steps))
    )


@pytest.mark.parametrize("sampling", ["random", "consecutive"])
@pytest.mark.parametrize("batch_size,num_steps", [(1, 1), (2, 3), (32, 35)])
def test_min_tokens_is_the_threshold_for_one_batch(sampling, batch_size, num_steps):
    needed = min_tokens(batch_size, num_steps, sampling)
    assert num_batches(needed, batch_size, num_steps, sampling) == 1
    assert num_batches(needed - 1, batch_size, num_steps, sampling) == 0


def test_check_enough_tokens_names_the_numbers_and_the_fix():
    check_enough_tokens(8, B, T)  # B * (T + 1) = 8: one batch in both modes
    with pytest.raises(ValueError) as err:
        check_enough_tokens(7, B, T, what="val split")
    message = str(err.value)
    for part in ("val split", "7 tokens", "batch_size=2", "num_steps=3", "8", "smaller batch_size"):
        assert part in message
    check_enough_tokens(7, B, T, sampling="random")  # random only needs B * T + 1 = 7
    with pytest.raises(ValueError, match="needs at least 7"):
        check_enough_tokens(6, B, T, sampling="random")


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown sampling"):
        num_batches(30, B, T, "shuffled")
    with pytest.raises(ValueError, match="1-D"):
        next(random_batches(torch.zeros(2, 15), B, T))
    with pytest.raises(ValueError, match="batch_size"):
        next(consecutive_batches(SEQ, 0, T))


def test_variable_lengths_vary_around_num_steps_and_cover_every_input_column():
    n, batch_size, num_steps = 4 * 2000, 4, 35
    lengths = variable_lengths(n, batch_size, num_steps, torch.Generator().manual_seed(0))
    assert sum(lengths) == n // batch_size - 1  # every input column, the last label's excepted
    assert len(set(lengths)) > 10 and min(lengths[:-1]) >= 5
    assert abs(sum(lengths[:-1]) / len(lengths[:-1]) - 0.975 * num_steps) < 2  # 0.95 x 35 + 0.05 x 17.5
    assert any(length < num_steps / 2 + 6 for length in lengths)  # the p = 0.05 half-length draws
    assert variable_lengths(n, batch_size, num_steps, torch.Generator().manual_seed(0)) == lengths
    assert variable_lengths(n, batch_size, num_steps, torch.Generator().manual_seed(1)) != lengths
    assert min(variable_lengths(400, 2, 2, torch.Generator().manual_seed(0))) >= 1  # num_steps < 5
    assert variable_lengths(3, 2, 3) == []  # one column: nothing to predict


def test_variable_length_batches_read_every_token_once_in_order():
    ids = torch.arange(2 * 150)
    lengths = variable_lengths(len(ids), 2, 6, torch.Generator().manual_seed(3))
    batches = list(consecutive_batches(ids, 2, 6, lengths=lengths))
    assert [x.size(1) for x, _ in batches] == lengths
    inputs = torch.cat([x for x, _ in batches], dim=1)  # (B, batch_len - 1)
    labels = torch.cat([y for _, y in batches], dim=1)
    assert torch.equal(inputs, ids.view(2, 150)[:, :-1]) and torch.equal(labels, inputs + 1)
    # Row r of batch i+1 still starts right where row r of batch i ended (the state is carried).
    for (previous, _), (following, _) in zip(batches, batches[1:]):
        assert torch.equal(following[:, 0], previous[:, -1] + 1)
    some = list(consecutive_batches(ids, 2, 6, rows=slice(1, None, 2), lengths=lengths))
    assert all(torch.equal(x_some, x[1:]) for (x_some, _), (x, _) in zip(some, batches))


def test_lengths_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match=r"sum to at most 14"):
        next(consecutive_batches(SEQ, B, T, lengths=[10, 5]))
    with pytest.raises(ValueError, match=r">= 1"):
        next(consecutive_batches(SEQ, B, T, lengths=[3, 0]))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.int32])
def test_batches_of_narrow_ids_equal_those_of_int64_ids(dtype, tmp_path):
    # The id files hold 1-2 bytes a token (lyricist.data.vocab.load_ids); every batch is int64 all the same.
    wide = torch.arange(500) * 7 % 200  # (N,) int64
    vocab_size = {torch.uint8: 256, torch.uint16: 300, torch.int32: 70_000}[dtype]
    save_ids(tmp_path / "ids.npy", wide.numpy(), vocab_size)
    narrow = load_ids(tmp_path / "ids.npy")
    assert narrow.dtype == dtype and np.load(tmp_path / "ids.npy").dtype.itemsize < 8
    makers = {
        "random": lambda ids: random_batches(ids, 4, 7, generator=torch.Generator().manual_seed(3)),
        "consecutive": lambda ids: consecutive_batches(ids, 4, 7),
        "one stream": lambda ids: consecutive_batches(ids, 1, 7),
        "rows and lengths": lambda ids: consecutive_batches(ids, 4, 7, rows=slice(1, None, 2), lengths=[5, 9, 3]),
    }
    for name, make in makers.items():
        expected, got = list(make(wide)), list(make(narrow))
        assert len(got) == len(expected) > 0, name
        for (x, y), (ex, ey) in zip(got, expected):
            assert x.dtype == y.dtype == torch.int64, name
            assert x.is_contiguous() and torch.equal(x, ex) and torch.equal(y, ey), name
