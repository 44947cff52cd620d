"""Tests for companion.loader: sliding windows, random-offset batches, the train/val split, train_model on both."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.bigram import BigramLM
from companion.data.shards import read_shard, sha256_text, write_shard
from companion.loader import RandomBatches, SlidingWindowDataset, make_loader, random_batch, train_val_split
from companion.tokenizer import CharTokenizer
from companion.train import train_model


@pytest.fixture
def shard(tmp_path):
    """A uint16 memmap shard of 1,000 ids cycling through 0..96."""
    ids = [i % 97 for i in range(1000)]
    write_shard(tmp_path / "s", ids, tokenizer="test", vocab_size=97, source_sha256=sha256_text("x"))
    return read_shard(tmp_path / "s")


def _all_items(ds):
    return [ds[i] for i in range(len(ds))]


# --- SlidingWindowDataset ------------------------------------------------------------------


def test_hand_worked_windows_ids_0_to_9_context_4_stride_2():
    """Starts 0, 2, 4 (start 6 would need ids[10]):
    x [0,1,2,3] y [1,2,3,4]; x [2,3,4,5] y [3,4,5,6]; x [4,5,6,7] y [5,6,7,8]."""
    ds = SlidingWindowDataset(list(range(10)), context_length=4, stride=2)
    assert len(ds) == 3
    assert [(x.tolist(), y.tolist()) for x, y in _all_items(ds)] == [
        ([0, 1, 2, 3], [1, 2, 3, 4]),
        ([2, 3, 4, 5], [3, 4, 5, 6]),
        ([4, 5, 6, 7], [5, 6, 7, 8]),
    ]


def test_stride_defaults_to_context_length():
    """ids 0..9, T=3: starts 0, 3 (start 6 needs ids[6..9], fits), so windows at 0, 3, 6."""
    ds = SlidingWindowDataset(list(range(10)), 3)
    assert ds.stride == 3
    assert [x.tolist() for x, _ in _all_items(ds)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


@pytest.mark.parametrize("make", [list, torch.tensor, np.array, lambda ids: np.array(ids, dtype=np.uint16)])
def test_targets_are_inputs_shifted_by_one_for_every_item(make):
    ids = [(7 * i + 3) % 50 for i in range(200)]
    ds = SlidingWindowDataset(make(ids), context_length=16, stride=5)
    for i, (x, y) in enumerate(_all_items(ds)):
        assert x.dtype == y.dtype == torch.int64
        assert x.shape == y.shape == (16,)
        assert x.tolist() == ids[5 * i : 5 * i + 16]
        assert torch.equal(x[1:], y[:-1])
        assert y[-1].item() == ids[5 * i + 16]


def test_works_on_a_memmap_shard(shard):
    ds = SlidingWindowDataset(shard.tokens, 8)
    x, y = ds[3]
    assert x.tolist() == shard.tokens[24:32].tolist()
    assert y.tolist() == shard.tokens[25:33].tolist()
    assert len(SlidingWindowDataset(shard, 8)) == len(ds)  # a Shard itself works too


@pytest.mark.parametrize("n", [5, 6, 7, 8, 9, 10, 11, 17])
@pytest.mark.parametrize("stride", [1, 2, 3, 4, 5])
def test_len_counts_only_full_windows(n, stride):
    """A window at start s needs s + T + 1 <= n; count such s in 0, stride, 2*stride, ... (T = 4)."""
    ds = SlidingWindowDataset(list(range(n)), 4, stride)
    expected = len([s for s in range(0, n, stride) if s + 4 + 1 <= n])
    assert len(ds) == expected
    assert ds[len(ds) - 1][1][-1].item() <= n - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 300), t=st.integers(1, 40), stride=st.integers(1, 50))
def test_len_matches_brute_force_and_last_window_fits(n, t, stride):
    if n < t + 1:
        with pytest.raises(ValueError):
            SlidingWindowDataset(list(range(n)), t, stride)
        return
    ds = SlidingWindowDataset(list(range(n)), t, stride)
    assert len(ds) == len(range(0, n - t, stride))
    x, y = ds[-1]  # ids are 0..n-1, so x[0] is the last window's start
    assert y[-1].item() == x[0].item() + t <= n - 1  # the last window fits
    assert x[0].item() + stride + t + 1 > n  # and one more stride would not


def test_indexing_with_a_list_returns_a_batch():
    ds = SlidingWindowDataset(list(range(10)), 4, 2)
    x, y = ds[[2, 0]]
    assert x.tolist() == [[4, 5, 6, 7], [0, 1, 2, 3]]
    assert y.tolist() == [[5, 6, 7, 8], [1, 2, 3, 4]]


@pytest.mark.parametrize(
    "ids, t, stride, match",
    [
        (list(range(4)), 4, None, "too few"),  # needs T + 1 = 5
        ([], 1, None, "too few"),
        (list(range(10)), 0, None, "context_length"),
        (list(range(10)), 4, 0, "stride"),
        (list(range(10)), 4, -1, "stride"),
        ([[1, 2], [3, 4]], 1, None, "one-dimensional"),
        ([0.5, 1.5, 2.5], 1, None, "integers"),
    ],
)
def test_bad_dataset_inputs_raise_value_error(ids, t, stride, match):
    with pytest.raises(ValueError, match=match):
        SlidingWindowDataset(ids, t, stride)


# --- make_loader ---------------------------------------------------------------------------


def test_make_loader_yields_every_window_once_per_epoch(shard):
    ds = SlidingWindowDataset(shard, 16, 8)
    loader = make_loader(shard, 16, batch_size=10, stride=8, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(loader) == len(batches) == math.ceil(len(ds) / 10)
    assert all(x.shape == y.shape and x.shape[1] == 16 and x.dtype == torch.int64 for x, y in batches)
    got = sorted(tuple(row) for x, _ in batches for row in x.tolist())
    assert got == sorted(tuple(x.tolist()) for x, _ in _all_items(ds))


def test_make_loader_without_shuffle_keeps_order_and_drop_last_drops():
    loader = make_loader(list(range(10)), 4, batch_size=2, stride=2, shuffle=False)
    assert [x.tolist() for x, _ in loader] == [[[0, 1, 2, 3], [2, 3, 4, 5]], [[4, 5, 6, 7]]]
    assert len(make_loader(list(range(10)), 4, 2, 2, shuffle=False, drop_last=True)) == 1


def test_make_loader_is_deterministic_under_a_seeded_generator(shard):
    def run(seed):
        return [x for x, _ in make_loader(shard, 8, 4, generator=torch.Generator().manual_seed(seed))]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 200, "drop_last": True}])
def test_make_loader_bad_batch_raises(kwargs):
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(list(range(100)), 4, **{"stride": None, **kwargs})


# --- random batches ------------------------------------------------------------------------


def test_random_batches_are_deterministic_under_a_seed(shard):
    a = list(RandomBatches(shard, 4, 8, steps=5, generator=torch.Generator().manual_seed(0)))
    b = list(RandomBatches(shard, 4, 8, steps=5, generator=torch.Generator().manual_seed(0)))
    c = list(RandomBatches(shard, 4, 8, steps=5, generator=torch.Generator().manual_seed(1)))
    assert len(a) == 5
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_random_batch_windows_are_real_slices_in_range(shard):
    x, y = random_batch(shard.tokens, 64, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, (x + 1) % 97)  # the shard counts 0..96 cyclically, so every row is a real slice
    assert 0 <= int(x.min()) and int(y.max()) < 97


def test_random_offsets_cover_exactly_0_to_n_minus_t_minus_1():
    """ids = 0..9, T = 4: offsets lie in [0, 5], so x[:, 0] takes exactly the values 0..5 and y reaches 9."""
    x, y = random_batch(torch.arange(10), 2000, 4, torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == set(range(6))
    assert torch.equal(x, x[:, :1] + torch.arange(4))  # each row is a contiguous slice
    assert int(y.max()) == 9


def test_random_batches_continue_the_generator_across_epochs():
    rb = RandomBatches(list(range(100)), 2, 4, steps=3, generator=torch.Generator().manual_seed(0))
    first, second = [x for x, _ in rb], [x for x, _ in rb]
    assert len(rb) == 3
    assert not all(torch.equal(p, q) for p, q in zip(first, second))


@pytest.mark.parametrize(
    "args, match",
    [
        ((list(range(4)), 2, 4, 1), "too few"),
        ((list(range(10)), 0, 4, 1), "batch_size"),
        ((list(range(10)), 2, 4, 0), "steps"),
    ],
)
def test_bad_random_batch_inputs_raise_value_error(args, match):
    with pytest.raises(ValueError, match=match):
        RandomBatches(*args)


# --- train_val_split -----------------------------------------------------------------------


@pytest.mark.parametrize("n, frac", [(10, 0.1), (10, 0.2), (1000, 0.1), (7, 0.5), (3, 0.34)])
def test_split_is_contiguous_with_the_tail_as_validation(n, frac):
    ids = list(range(n))
    train, val = train_val_split(ids, frac)
    assert len(val) == round(n * frac)
    assert train + val == ids  # nothing lost, nothing reordered: val is the last stretch


def test_split_of_a_shard_stays_a_memmap_view(shard):
    train, val = train_val_split(shard, 0.1)
    assert isinstance(train, np.memmap) and isinstance(val, np.memmap)
    assert (len(train), len(val)) == (900, 100)
    assert val[0] == shard.tokens[900]


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_split_fraction_outside_open_unit_interval_raises(frac):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(list(range(100)), frac)


@pytest.mark.parametrize("n, frac", [(10, 0.01), (10, 0.99), (1, 0.5)])
def test_split_leaving_a_side_empty_raises(n, frac):
    with pytest.raises(ValueError, match="at least one"):
        train_val_split(list(range(n)), frac)


# --- chapter 1's train_model on both kinds of loader -----------------------------------------


@pytest.fixture
def char_ids():
    text = "to be, or not to be: that is the question. " * 30
    tok = CharTokenizer.from_text(text)
    return tok, tok.encode(text)


def _train(loader, vocab_size):
    torch.manual_seed(0)
    model = BigramLM(vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return train_model(model, loader, opt, "cpu", epochs=1, progress=False)


def test_train_model_runs_one_epoch_on_make_loader(char_ids):
    tok, ids = char_ids
    train, _ = train_val_split(ids, 0.1)
    loader = make_loader(train, 16, 8, generator=torch.Generator().manual_seed(0))
    history = _train(loader, tok.vocab_size)
    assert len(history["step_loss"]) == len(loader)
    assert len(history["epoch_loss"]) == 1 and math.isfinite(history["epoch_loss"][0])
    assert history["step_loss"][-1] < history["step_loss"][0]


def test_train_model_runs_one_epoch_on_random_batches(char_ids):
    tok, ids = char_ids
    loader = RandomBatches(torch.tensor(ids), 8, 16, steps=30, generator=torch.Generator().manual_seed(0))
    history = _train(loader, tok.vocab_size)
    assert len(history["step_loss"]) == 30
    assert history["step_loss"][-1] < history["step_loss"][0] < math.log(tok.vocab_size) + 1.0
