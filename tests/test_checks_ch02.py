"""Chapter 2's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

import re

import pytest

from companion.checks import ExerciseFailed, check_2_1, check_2_2, check_2_3, check_2_4, check_2_5, check_2_6
from checkhelpers import stub, fails_with
import numpy as np

from companion.data import jaccard, lsh_params, shingles
from companion.data.decontam import overlap_report


# --- 2.1 c4_rejects ---------------------------------------------------------------------------------

TERMINAL = (".", "!", "?", '"')
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
          "use cookies")


def c4_rejects(text, terminal=TERMINAL, min_words=5, strip=True, js=True, brace=True, lorem=True,
               policy=True, ellipsis=True, count_lines=False, whole_page=False, lines_needed=3,
               lorem_anywhere=False, brace_first=False, policy_first=False):
    if whole_page and ("{" in text or "lorem ipsum" in text.lower()):
        return True
    if lorem_anywhere and "lorem ipsum" in text.lower():  # tested on skipped lines too
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
        if brace_first and "{" in line:  # the curly bracket before the javascript test
            return True
        if policy_first and any(p in low for p in POLICY):  # the policy before the bracket
            continue
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
    (lambda t: c4_rejects(t, brace_first=True), "skipped before the curly-bracket test"),
    (lambda t: c4_rejects(t, policy_first=True), "before the policy test"),
    (lambda t: c4_rejects(t, lorem_anywhere=True), "skipped before the lorem-ipsum test"),
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


def strict_recall(threshold, num_perm, recall=0.995):  # "> recall" where "at least" means >=
    best = (num_perm, 1)
    for rows in range(1, num_perm // 2 + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands > recall:
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
    (strict_recall, ">=, not"),
    (lambda t, p, r=0.995: (p / lsh_params(t, p, r)[1], lsh_params(t, p, r)[1]), "whole numbers"),
])
def test_check_2_3_rejects_mistakes(wrong, fragment):
    fails_with(check_2_3, wrong, fragment)


# --- 2.4 keep_central -----------------------------------------------------------------------------

def keep_central(texts, labels, n=5, *, score_by=sum, tie_largest=False, first=False,
                 include_self=False, unsorted=False, drop_singletons=False):
    members = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    keep = []
    for docs in members.values():
        if drop_singletons and len(docs) == 1:
            continue
        sets = {i: shingles(texts[i], n) for i in docs}

        def score(i):
            sims = [jaccard(sets[i], sets[j]) for j in docs if include_self or j != i]
            return round(score_by(sims or [0.0]), 9)

        if first:
            keep.append(docs[0])
        else:
            keep.append(max(docs, key=lambda i: (score(i), i if tie_largest else -i)))
    return keep if unsorted else sorted(keep)


def test_check_2_4_passes_on_a_correct_answer(capsys):
    check_2_4(keep_central)
    out = capsys.readouterr().out
    assert "passed" in out and "keeps the original in 20" in out


def test_check_2_4_passes_when_self_similarity_is_counted():  # adds 1.0 to every member alike
    check_2_4(lambda t, l, n=5: keep_central(t, l, n, include_self=True))


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda t, l, n=5: keep_central(t, l, n, first=True), "kept the first member"),
    (lambda t, l, n=5: keep_central(t, l, n, score_by=max), "largest single similarity"),
    (lambda t, l, n=5: keep_central(t, l, n, score_by=min), "least similar copy"),
    (lambda t, l, n=5: keep_central(t, l, n, tie_largest=True), "smallest index"),
    (lambda t, l, n=5: keep_central(t, l, n, drop_singletons=True), "cluster of one"),
    (lambda t, l, n=5: keep_central(t, l, n, unsorted=True), "sorted"),
    (lambda t, l, n=5: sorted(set(l)), "list of kept indices"),  # the labels, not indices
    (lambda t, l, n=5: None, "forget to return"),
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


def one_gram_only(which):  # tests only the first (0) or the last (-1) n-gram of each item
    def fn(train, evals, n=13):
        seen = set().union(*(_ngrams13(t, n) for t in train))
        out = []
        for i, t in enumerate(evals):
            words = re.findall(r"\w+", t.lower())
            grams = [tuple(words[k:k + n]) for k in range(len(words) - n + 1)]
            if grams and grams[which] in seen:
                out.append(i)
        return out
    return fn


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
    (one_gram_only(-1), "test every n-gram"),
    (one_gram_only(0), "test every n-gram"),
])
def test_check_2_5_rejects_mistakes(wrong, fragment):
    fails_with(check_2_5, wrong, fragment)


# --- 2.6 drop_repeated_lines -----------------------------------------------------------------------

def make_drop(first_copy_stays=False, strict=False, occurrences=False, raw_key=False, keep_blank=False):
    def key(line):
        return line if raw_key else " ".join(line.lower().split())

    def fn(docs, min_docs):
        counts = {}
        for d in docs:
            keys = [key(ln) for ln in d.split("\n") if ln.strip()]
            for k in (keys if occurrences else set(keys)):
                counts[k] = counts.get(k, 0) + 1
        seen, out = set(), []
        for d in docs:
            kept = []
            for ln in d.split("\n"):
                if not ln.strip():
                    if keep_blank:
                        kept.append(ln)
                    continue
                k = key(ln)
                shared = counts[k] > min_docs if strict else counts[k] >= min_docs
                if shared and not (first_copy_stays and k not in seen):
                    continue
                seen.add(k)
                kept.append(ln)
            out.append(kept)
        return out
    return fn


def test_check_2_6_passes_on_a_correct_answer(capsys):
    check_2_6(make_drop())
    out = capsys.readouterr().out
    assert "passed" in out and "44 real pages" in out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (make_drop(first_copy_stays=True), "kept the first copy"),
    (make_drop(strict=True), ">=, not >"),
    (make_drop(occurrences=True), "not its occurrences"),
    (make_drop(raw_key=True), "lower-cased"),
    (make_drop(keep_blank=True), "blank lines"),
    (lambda docs, m: [[ln.strip() for ln in d] for d in make_drop()(docs, m)], "as written"),
    (lambda docs, m: ["\n".join(d) for d in make_drop()(docs, m)], "one list of kept lines"),
    (lambda docs, m: None, "forget to return"),
])
def test_check_2_6_rejects_mistakes(wrong, fragment):
    fails_with(check_2_6, wrong, fragment)
