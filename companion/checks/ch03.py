"""Self-checks for chapter 3's exercises: counting pairs, merging a pair, sliding windows."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import torch

from ..loader import SlidingWindowDataset
from ..tokenizer import merge
from ._core import as_tensor, call, fail, passed

__all__ = ["check_3_1", "check_3_2", "check_3_3"]


def check_3_1(count_pairs: Callable[[list[int]], dict]) -> None:
    """count_pairs(ids) -> {(a, b): times b directly follows a}."""
    ex = "3.1"

    def run(ids: list[int]) -> dict:
        got = call(ex, count_pairs, list(ids))
        if not isinstance(got, Mapping):
            fail(ex, f"return a dict of pair -> count, got {type(got).__name__}")
        return dict(got)

    got = run([1, 2, 3, 1, 2])
    want = {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    if got == {(b, a): n for (a, b), n in want.items()}:
        fail(ex, "your pairs are reversed: the key is (ids[i], ids[i + 1]), current first.")
    if set(got) == set(want) and all(v == 1 for v in got.values()):
        fail(ex, "every count is 1: you recorded which pairs occur, not how often. (1, 2) occurs twice in [1, 2, 3, 1, 2].")
    if got != want:
        fail(ex, f"for [1, 2, 3, 1, 2] expected {want}, got {got}")
    for short in ([], [5]):
        if (g := run(short)) != {}:
            fail(ex, f"{short} has no adjacent pairs, so expect {{}}, got {g}")
    if (g := run([7, 7, 7])) != {(7, 7): 2}:
        fail(ex, f"[7, 7, 7] holds the pair (7, 7) twice (positions 0-1 and 1-2): pairs overlap when counting. Got {g}")
    data = list(bytes(range(256)) * 3 + "the theatre then".encode())
    if run(data) != dict(Counter(zip(data, data[1:]))):
        fail(ex, "right on the small cases but wrong on 784 bytes; check that every position is counted.")
    passed(ex, "counts match on a hand-worked case, empty and one-element input, overlaps, and 784 bytes.")


def check_3_2(merge_pair: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """merge_pair(ids, pair, new_id) -> ids with each non-overlapping occurrence of pair (left to right) replaced."""
    ex = "3.2"

    def run(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
        original = list(ids)
        got = call(ex, merge_pair, ids, pair, new_id)
        if ids != original:
            fail(ex, "your function changed the input list; build and return a new list instead.")
        if not isinstance(got, (list, tuple)):
            fail(ex, f"return a list of ids, got {type(got).__name__}")
        return [int(i) for i in got]

    if (g := run([1, 2, 3, 4], (3, 4), 99)) != [1, 2, 99]:
        hint = " The pair at the very end was missed: let the loop reach the last element." if g[-2:] == [3, 4] or len(g) < 3 else ""
        fail(ex, f"merging (3, 4) in [1, 2, 3, 4] should give [1, 2, 99], got {g}.{hint}")
    if (g := run([97, 97, 97], (97, 97), 256)) != [256, 97]:
        fail(ex, f"merging (97, 97) in [97, 97, 97] should give [256, 97], got {g}. After a match, skip both "
                 "tokens: occurrences must not overlap, and the scan goes left to right.")
    if (g := run([5, 6, 7], (1, 2), 300)) != [5, 6, 7]:
        fail(ex, f"a pair that does not occur leaves the ids unchanged: expected [5, 6, 7], got {g}")
    if (g := run([1, 2, 1, 2, 1], (1, 2), 9)) != [9, 9, 1]:
        fail(ex, f"merging (1, 2) in [1, 2, 1, 2, 1] should give [9, 9, 1], got {g}")
    if (g := run([], (1, 2), 9)) != []:
        fail(ex, f"an empty list stays empty, got {g}")
    data = list("the theatre then thaws".encode())
    if run(data, (116, 104), 256) != merge(data, (116, 104), 256):
        fail(ex, "right on the small cases but different from the companion's merge on a sentence.")
    passed(ex, "merges at the end, without overlap, not at all, repeatedly, and on a sentence; the input is untouched.")


def check_3_3(sliding_windows: Callable[[list[int], int, int], tuple[torch.Tensor, torch.Tensor]]) -> None:
    """sliding_windows(ids, T, stride) -> (x, y), int64 (n, T), window k starting at k * stride, y = x shifted by one."""
    ex = "3.3"

    def run(ids: list[int], t: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        got = call(ex, sliding_windows, list(ids), t, stride)
        if not (isinstance(got, tuple) and len(got) == 2):
            fail(ex, "return a pair (x, y) of tensors")
        return as_tensor(ex, got[0], "x"), as_tensor(ex, got[1], "y")

    ids = list(range(10))
    x, y = run(ids, 4, 2)
    want_x = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]])
    if x.dtype != torch.long or y.dtype != torch.long:
        fail(ex, f"x and y should be int64 token ids (embedding lookups need them), got {x.dtype} and {y.dtype}")
    if x.shape[1:] != (4,) or y.shape != x.shape:
        fail(ex, f"x and y should both have shape (n_windows, 4) for context_length=4, got {tuple(x.shape)} and {tuple(y.shape)}")
    if torch.equal(y, x):
        fail(ex, "y equals x: the target is the input shifted one token to the right, y[k] = ids[s + 1 : s + T + 1].")
    if x.shape[0] > 3:
        fail(ex, f"for 10 ids, T=4, stride 2 expect 3 windows (starts 0, 2, 4), got {x.shape[0]}: "
                 "a window whose target runs past the end must be left out.")
    if not torch.equal(x, want_x) or not torch.equal(y, want_x + 1):
        fail(ex, f"for ids 0..9, T=4, stride 2 expected x = {want_x.tolist()} and y = x + 1, got x = {x.tolist()}, y = {y.tolist()}")
    # The boundary case: with 9 ids, T=4, stride 4, the window at 4 needs ids 4..8, and id 8 is the last one.
    x, _ = run(list(range(9)), 4, 4)
    if x.shape[0] == 1:
        fail(ex, "you dropped the last window: for 9 ids, T=4, stride 4 the window starting at 4 still fits "
                 "(its target ends at id 8, the last one). Starts run over range(0, len(ids) - T, stride).")
    if x.shape[0] != 2:
        fail(ex, f"for 9 ids, T=4, stride 4 expect 2 windows (starts 0 and 4), got {x.shape[0]}")
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, 50, (101,), generator=g).tolist()
    for t, stride in ((8, 8), (8, 3), (4, 4), (5, 20)):
        x, y = run(data, t, stride)
        ref = SlidingWindowDataset(data, t, stride)
        rx = torch.stack([ref[i][0] for i in range(len(ref))])
        if x.shape != rx.shape or not torch.equal(x, rx) or not torch.equal(y, torch.stack([ref[i][1] for i in range(len(ref))])):
            fail(ex, f"on 101 random ids with T={t}, stride={stride} expected {tuple(rx.shape)} windows matching "
                     f"SlidingWindowDataset, got {tuple(x.shape)}")
    try:
        sliding_windows(list(range(4)), 4, 1)
    except ValueError:
        pass
    except Exception as err:  # noqa: BLE001
        fail(ex, f"4 ids cannot fill one window of T=4 plus its target: raise ValueError, not {type(err).__name__}")
    else:
        fail(ex, "4 ids cannot fill one window of T=4 plus its shifted target: raise ValueError.")
    passed(ex, "matches the hand-worked case, the boundary window, and SlidingWindowDataset at three strides; rejects too-short input.")
