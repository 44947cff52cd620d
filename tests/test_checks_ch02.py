"""Chapter 2's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

import re

import pytest

from companion.checks import ExerciseFailed, check_2_1, check_2_2, check_2_3, check_2_4, check_2_5
from checkhelpers import stub, fails_with
import numpy as np

from companion.data import jaccard, lsh_candidate_pairs, lsh_params, shingles, union_find_clusters
from companion.data.decontam import overlap_report


# --- 2.1 c4_rejects ---------------------------------------------------------------------------------

TERMINAL = (".", "!", "?", '"')
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
          "use cookies")


def c4_rejects(text, terminal=TERMINAL, min_words=5, strip=True, js=True, brace=True, lorem=True,
               policy=True, ellipsis=True, count_lines=False, whole_page=False, lines_needed=3):
    if whole_page and ("{" in text or "lorem ipsum" in text.lower()):
        return True
    sentences = 0
    for line in text.splitlines():
        line = line.strip() if strip else line
        if not line.endswith(terminal) or (ellipsis and line.endswith("...")) \
                or len(line.split()) < min_words:
            continue
        low = line.lower()
        if lorem and "lorem ipsum" in low:
            return True
        if js and "javascript" in low:
            continue
        if brace and "{" in line:
            return True
        if policy and any(p in low for p in POLICY):
            continue
        found = len(re.findall(r'[.!?]["\u201d\']*(?=\s|$)', line))
        sentences += 1 if count_lines else max(1, found)
    return sentences < lines_needed


def test_check_2_1_passes_on_a_correct_answer(capsys):
    check_2_1(c4_rejects)
    out = capsys.readouterr().out
    assert "passed" in out and "precision" in out and "recall" in out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda t: c4_rejects(t, terminal=(".", "!", "?")), "closing quotation"),
    (lambda t: c4_rejects(t, min_words=1), "at least 5 words"),
    (lambda t: c4_rejects(t, js=False), "JavaScript"),
    (lambda t: c4_rejects(t, brace=False), "curly bracket"),
    (lambda t: c4_rejects(t, lorem=False), "lorem ipsum"),
    (lambda t: c4_rejects(t, policy=False), "policy phrase"),
    (lambda t: c4_rejects(t, ellipsis=False), "ellipsis"),
    (lambda t: c4_rejects(t, count_lines=True), "sentences, not lines"),  # the old, wrong rule
    (lambda t: c4_rejects(t, whole_page=True), "already skipped"),
    (lambda t: c4_rejects(t, strip=False), "Strip each line"),
    (lambda t: c4_rejects(t, terminal=("",)), "terminal punctuation"),  # every line "ends" in ""
    (lambda t: c4_rejects(t, lines_needed=5), "expect False"),
    (lambda t: c4_rejects(t, min_words=6), "exactly 5 words"),  # the boundary
    (lambda t: not c4_rejects(t), "expect False"),  # True and False swapped
    (lambda t: None, "forget to return"),
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


def exclusive_end(threshold, num_perm, recall=0.995):  # range(1, num_perm // 2): misses the end
    best = (num_perm, 1)
    for rows in range(1, num_perm // 2):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
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
    (exclusive_end, "inclusive"),
])
def test_check_2_3_rejects_mistakes(wrong, fragment):
    fails_with(check_2_3, wrong, fragment)


# --- 2.4 lsh_clusters ------------------------------------------------------------------------------

def lsh_clusters(sig, bands, rows):
    return union_find_clusters(len(sig), lsh_candidate_pairs(sig, bands, rows))


def direct_pairs_only(sig, bands, rows):  # no union-find: the smallest direct partner, no chains
    labels = list(range(len(sig)))
    for i, j in lsh_candidate_pairs(sig, bands, rows):
        labels[j] = min(labels[j], i)
    return labels


def per_value_buckets(sig, bands, rows):  # one bucket per single value, not per whole band
    pairs = {(i, j) for i in range(len(sig)) for j in range(i + 1, len(sig))
             if any(sig[i, c] == sig[j, c] for c in range(bands * rows))}
    return union_find_clusters(len(sig), pairs)


def largest_label(sig, bands, rows):  # clusters right, named by the largest member
    labels = lsh_clusters(sig, bands, rows)
    top = {}
    for i, lab in enumerate(labels):
        top[lab] = i
    return [top[lab] for lab in labels]


def overlapping_bands(sig, bands, rows):  # band k starts at column k, not k * rows
    n = len(sig)
    pairs = set()
    for k in range(bands):
        keys = {}
        for d in range(n):
            keys.setdefault(sig[d, k:k + rows].tobytes(), []).append(d)
        for docs in keys.values():
            pairs.update((a, b) for x, a in enumerate(docs) for b in docs[x + 1:])
    return union_find_clusters(n, pairs)


def test_check_2_4_passes_on_a_correct_answer(capsys):
    check_2_4(lsh_clusters)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (direct_pairs_only, "chains"),
    (per_value_buckets, "whole band"),
    (largest_label, "smallest member"),
    (overlapping_bands, "k*rows"),
    (lambda sig, b, r: lsh_clusters(sig, b, r)[:-1], "one label per document"),
    (lambda sig, b, r: None, "forget to return"),
])
def test_check_2_4_rejects_mistakes(wrong, fragment):
    fails_with(check_2_4, wrong, fragment)


# --- 2.5 dirty_items -------------------------------------------------------------------------------

def _ngrams13(text, n, lower=True, drop_last=False):
    words = re.findall(r"\w+", text.lower() if lower else text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + (0 if drop_last else 1))}


def dirty_items(train, evals, n=13):
    return [r["index"] for r in overlap_report(train, evals, n) if r["dirty"]]


def make_dirty(lower=True, drop_last_eval=False, drop_last_train=False, short_is_gram=False, bag=False):
    def fn(train, evals, n=13):
        seen = set()
        for t in train:
            seen |= _ngrams13(t, n, lower, drop_last_train)
        words_seen = {w for t in train for w in re.findall(r"\w+", t.lower())}
        out = []
        for i, t in enumerate(evals):
            g = _ngrams13(t, n, lower, drop_last_eval)
            words = re.findall(r"\w+", t.lower())
            if short_is_gram and len(words) < n:
                g = {tuple(words)}
                if set(words) <= words_seen and words:
                    out.append(i)
                    continue
            if bag:
                if len(words) >= n and sum(w in words_seen for w in words) >= n:
                    out.append(i)
                continue
            if g & seen:
                out.append(i)
        return out
    return fn


def all_starts(train, evals, n=13):  # range(len(words)): the tail yields short "n-grams"
    def grams(t):
        words = re.findall(r"\w+", t.lower())
        return {tuple(words[i:i + n]) for i in range(len(words))}
    seen = set().union(*(grams(t) for t in train))
    return [i for i, t in enumerate(evals) if grams(t) & seen]


def test_check_2_5_passes_on_a_correct_answer(capsys):
    check_2_5(dirty_items)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (make_dirty(lower=False), "lower-cased"),
    (make_dirty(short_is_gram=True), "shorter than n"),
    (make_dirty(bag=True), "consecutive"),
    (make_dirty(drop_last_eval=True), "last n-gram of the evaluation"),
    (make_dirty(drop_last_train=True), "the last included"),
    (lambda tr, ev, n=13: None, "forget to return"),
    (lambda tr, ev, n=13: make_dirty()([" ".join(tr)], ev, n), "across the boundary"),
    (all_starts, "shorter tail"),
])
def test_check_2_5_rejects_mistakes(wrong, fragment):
    fails_with(check_2_5, wrong, fragment)
