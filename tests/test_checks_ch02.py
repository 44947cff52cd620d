"""Chapter 2's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

import re

import pytest

from companion.checks import ExerciseFailed, check_2_1, check_2_2, check_2_3
from checkhelpers import stub, fails_with
from companion.data import jaccard, lsh_params, shingles

STOP = {"the", "be", "to", "of", "and", "that", "have", "with"}


# --- 2.1 enough_stop_words -------------------------------------------------------------------------

def enough_stop_words(text, min_count=2):
    return len(STOP & {w.strip(".,;:!?'\"").lower() for w in text.split()}) >= min_count


def test_check_2_1_passes_on_a_correct_answer(capsys):
    check_2_1(enough_stop_words)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda t, m=2: len(STOP & {w.strip(".,;:!?'\"") for w in t.split()}) >= m, "lower-case"),  # case-sensitive
    (lambda t, m=2: sum(w.strip(".,;:!?'\"").lower() in STOP for w in t.split()) >= m, "distinct"),  # occurrences
    (lambda t, m=2: len(STOP & {w.lower() for w in t.split()}) >= m, "strip punctuation"),
    (lambda t, m=2: sum(s in t.lower() for s in STOP) >= m, "whole words"),  # substrings
    (lambda t, m=2: len(STOP & {w.strip(".,;:!?'\"").lower() for w in t.split()}) >= 2, "min_count"),
    (lambda t, m=2: None, "forget to return"),
])
def test_check_2_1_rejects_mistakes(wrong, fragment):
    fails_with(check_2_1, wrong, fragment)


# --- 2.2 shingle_jaccard ---------------------------------------------------------------------------

def shingle_jaccard(a, b, n=5):
    return jaccard(shingles(a, n), shingles(b, n))


def _grams(text, n, lower=True, drop_last=False, as_list=False):
    words = re.findall(r"\w+", text.lower() if lower else text)
    if len(words) < n:
        out = [" ".join(words)] if words else []
    else:
        out = [" ".join(words[i:i + n]) for i in range(len(words) - n + (0 if drop_last else 1))]
    return out if as_list else set(out)


def over_one_set(a, b, n=5):
    sa, sb = _grams(a, n), _grams(b, n)
    return len(sa & sb) / len(sa) if sa else 1.0


def off_by_one(a, b, n=5):
    sa, sb = _grams(a, n, drop_last=True), _grams(b, n, drop_last=True)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def case_sensitive(a, b, n=5):
    sa, sb = set(" ".join(a.split()[i:i + n]) for i in range(len(a.split()) - n + 1)), \
        set(" ".join(b.split()[i:i + n]) for i in range(len(b.split()) - n + 1))
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def multiset(a, b, n=5):
    la, lb = _grams(a, n, as_list=True), _grams(b, n, as_list=True)
    inter = sum(min(la.count(g), lb.count(g)) for g in set(la) | set(lb))
    union = sum(max(la.count(g), lb.count(g)) for g in set(la) | set(lb))
    return inter / union if union else 1.0


def test_check_2_2_passes_on_a_correct_answer(capsys):
    check_2_2(shingle_jaccard)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (over_one_set, "union"),
    (off_by_one, "last n-gram"),
    (lambda a, b, n=5: jaccard(set(a.split()), set(b.split())), "not word bigrams"),
    (case_sensitive, "case and punctuation"),
    (multiset, "Use sets"),
    (lambda a, b, n=5: jaccard(_grams(a, n), _grams(b, n)) if a and b else 0.0, "empty"),
    (lambda a, b, n=5: str(shingle_jaccard(a, b, n)), "one number"),
])
def test_check_2_2_rejects_mistakes(wrong, fragment):
    fails_with(check_2_2, wrong, fragment)


# --- 2.3 pick_bands_rows ---------------------------------------------------------------------------

def pick_bands_rows(threshold, num_perm, recall=0.995):
    return lsh_params(threshold, num_perm, recall)


def smallest_rows(threshold, num_perm, recall=0.995):  # the first setting that works, not the cheapest
    for rows in range(1, num_perm // 2 + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def wrong_direction(threshold, num_perm, recall=0.995):  # keeps settings that *miss* the recall
    best = (num_perm, 1)
    for rows in range(1, num_perm // 2 + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands < recall:
            best = (bands, rows)
    return best


def test_check_2_3_passes_on_a_correct_answer(capsys):
    check_2_3(pick_bands_rows)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda t, p, r=0.995: tuple(reversed(lsh_params(t, p, r))), "swapped"),
    (smallest_rows, "largest"),
    (wrong_direction, "below the recall"),
    (lambda t, p, r=0.995: (lsh_params(t, p, r)[0] + 1, lsh_params(t, p, r)[1]), "num_perm // rows"),
    (lambda t, p, r=0.995: 21, "pair (bands, rows)"),
])
def test_check_2_3_rejects_mistakes(wrong, fragment):
    fails_with(check_2_3, wrong, fragment)
