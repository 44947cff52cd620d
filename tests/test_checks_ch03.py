"""Chapter 3's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from companion.checks import ExerciseFailed, check_3_1, check_3_2, check_3_3
from checkhelpers import stub, fails_with


# --- 3.1 count_pairs -------------------------------------------------------------

def count_pairs(ids):
    return dict(Counter(zip(ids, ids[1:])))


def test_check_3_1_passes_on_a_correct_answer(capsys):
    check_3_1(count_pairs)
    assert "passed" in capsys.readouterr().out


def test_check_3_1_accepts_a_counter():
    check_3_1(lambda ids: Counter(zip(ids, ids[1:])))


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda ids: {(b, a): n for (a, b), n in Counter(zip(ids, ids[1:])).items()}, "reversed"),
    (lambda ids: {p: 1 for p in zip(ids, ids[1:])}, "not how often"),
    (lambda ids: dict(Counter(zip(ids[::2], ids[1::2]))), "Exercise 3.1"),  # non-overlapping pairs only
    (lambda ids: list(zip(ids, ids[1:])), "return a dict"),
])
def test_check_3_1_rejects_mistakes(wrong, fragment):
    fails_with(check_3_1, wrong, fragment)


def test_check_3_1_overlap_hint():
    def skip_after_match(ids):  # counts (7, 7) once in [7, 7, 7]
        out, i = {}, 0
        while i + 1 < len(ids):
            out[(ids[i], ids[i + 1])] = out.get((ids[i], ids[i + 1]), 0) + 1
            i += 2 if ids[i] == ids[i + 1] else 1
        return out
    fails_with(check_3_1, skip_after_match, "overlap")


# --- 3.2 merge_pair --------------------------------------------------------------

def merge_pair(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def test_check_3_2_passes_on_a_correct_answer(capsys):
    check_3_2(merge_pair)
    assert "passed" in capsys.readouterr().out


def overlapping(ids, pair, new_id):  # replaces at every position, so [97, 97, 97] -> [256, 256]
    return [new_id if (a, b) == pair else a for a, b in zip(ids, ids[1:])] if len(ids) > 1 else list(ids)


def drops_last(ids, pair, new_id):  # loop stops one short, so a trailing unmatched id is lost
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def mutates(ids, pair, new_id):
    result = merge_pair(ids, pair, new_id)
    ids[:] = result
    return result


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (overlapping, "Exercise 3.2"),
    (drops_last, "Exercise 3.2"),
    (mutates, "changed the input list"),
    (lambda ids, pair, new_id: "".join(map(chr, ids)), "return a list"),
])
def test_check_3_2_rejects_mistakes(wrong, fragment):
    fails_with(check_3_2, wrong, fragment)


def test_check_3_2_overlap_hint_names_non_overlap():
    def greedy_right_to_left(ids, pair, new_id):  # [97, 97, 97] -> [97, 256]
        return merge_pair(ids[::-1], pair[::-1], new_id)[::-1]
    fails_with(check_3_2, greedy_right_to_left, "left to right")


# --- 3.3 sliding_windows ---------------------------------------------------------

def sliding_windows(ids, t, stride):
    starts = range(0, len(ids) - t, stride)
    if not starts:
        raise ValueError("too short")
    data = torch.tensor(ids)
    return (torch.stack([data[s:s + t] for s in starts]), torch.stack([data[s + 1:s + t + 1] for s in starts]))


def test_check_3_3_passes_on_a_correct_answer(capsys):
    check_3_3(sliding_windows)
    assert "passed" in capsys.readouterr().out


def drops_last_window(ids, t, stride):
    starts = range(0, len(ids) - t - 1, stride)
    if not starts:
        raise ValueError("too short")
    data = torch.tensor(ids)
    return (torch.stack([data[s:s + t] for s in starts]), torch.stack([data[s + 1:s + t + 1] for s in starts]))


def target_not_shifted(ids, t, stride):
    x, _ = sliding_windows(ids, t, stride)
    return x, x.clone()


def float_ids(ids, t, stride):
    x, y = sliding_windows(ids, t, stride)
    return x.float(), y.float()


def no_error_when_short(ids, t, stride):
    if len(ids) <= t:
        return torch.empty(0, t, dtype=torch.long), torch.empty(0, t, dtype=torch.long)
    return sliding_windows(ids, t, stride)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (drops_last_window, "dropped the last window"),
    (target_not_shifted, "y equals x"),
    (float_ids, "int64"),
    (no_error_when_short, "raise ValueError"),
])
def test_check_3_3_rejects_mistakes(wrong, fragment):
    fails_with(check_3_3, wrong, fragment)
