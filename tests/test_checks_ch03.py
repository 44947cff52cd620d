"""Chapter 3's self-checks pass on correct answers, and fail with a specific hint on the stub and
on plausible mistakes."""
from __future__ import annotations

from collections import Counter

import pytest
import regex
import torch

from checkhelpers import fails_with, stub
from companion.checks import check_3_1, check_3_2, check_3_3, check_3_4
from companion.tokenizer import GPT2_PATTERN, merge

# --- 3.1 pretokenize ------------------------------------------------------------------------

GPT4_STYLE = GPT2_PATTERN.replace("'(?:", "'(?i:").replace(r" ?\p{N}++", r"\p{N}{1,3}+")


def pretokenize(text):
    return regex.findall(GPT4_STYLE, text)


def test_check_3_1_passes_on_a_correct_answer(capsys):
    check_3_1(pretokenize)
    assert "passed" in capsys.readouterr().out


def test_check_3_1_accepts_case_insensitivity_for_the_whole_pattern():
    check_3_1(lambda t: regex.findall("(?i)" + GPT4_STYLE, t))


def digits_from_the_right(text):
    out = []
    for chunk in regex.findall(GPT2_PATTERN.replace("'(?:", "'(?i:"), text):
        digits = chunk.lstrip(" ")
        if digits and digits.isdigit():
            if len(digits) < len(chunk):
                out.append(" ")
            head = len(digits) % 3
            out += ([digits[:head]] if head else []) + [digits[i:i + 3] for i in range(head, len(digits), 3)]
        else:
            out.append(chunk)
    return out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda t: regex.findall(GPT2_PATTERN, t), "any case"),  # GPT-2's split unchanged
    (lambda t: regex.findall(GPT2_PATTERN.replace("'(?:", "'(?i:"), t), "at most three"),
    (lambda t: regex.findall(GPT4_STYLE.replace(r"\p{N}{1,3}+", r" ?\p{N}{1,3}+"), t), "own chunk"),
    (lambda t: regex.findall(GPT4_STYLE.replace(r"\p{N}", r"\d"), t), "number characters"),  # ² and ½ become punctuation
    (digits_from_the_right, "from the left"),
    (lambda t: regex.findall(r"\w+|\s+|[^\w\s]+", t), "belongs to the word after it"),
    (lambda t: regex.findall(GPT4_STYLE.replace(r"|\s+(?!\S)", ""), t), "all but its last space"),
    (lambda t: "".join(pretokenize(t)), "list of strings"),
])
def test_check_3_1_rejects_mistakes(wrong, fragment):
    fails_with(check_3_1, wrong, fragment)


# --- 3.2 train_bpe --------------------------------------------------------------------------

def _merge_all(chunks, pair, new_id):
    return [merge(ids, pair, new_id) for ids in chunks]


def train_bpe(text, num_merges, specials=(), split=True, first_id=256, tie=None, cut=True):
    parts = regex.split("|".join(map(regex.escape, specials)), text) if specials and cut else [text]
    pieces = [c for p in parts for c in regex.findall(GPT2_PATTERN, p)] if split else parts
    chunks = [list(c.encode("utf-8")) for c in pieces]
    merges = {}
    for new_id in range(first_id, first_id + num_merges):
        counts = Counter(p for ids in chunks for p in zip(ids, ids[1:]))
        if not counts:
            break
        top = max(counts, key=tie or counts.get)
        merges[top] = new_id
        chunks = _merge_all(chunks, top, new_id)
    return merges


def counts_once(text, num_merges, specials):  # ranks the initial pairs instead of recounting after merges
    chunks = [list(c.encode("utf-8")) for c in regex.findall(GPT2_PATTERN, text)]
    counts = Counter(p for ids in chunks for p in zip(ids, ids[1:]))
    return {p: 256 + i for i, (p, _) in enumerate(counts.most_common(num_merges))}


def crashes_when_no_pair_is_left(text, num_merges, specials):
    chunks = [list(c.encode("utf-8")) for c in regex.findall(GPT2_PATTERN, text)]
    merges = {}
    for new_id in range(256, 256 + num_merges):
        counts = Counter(p for ids in chunks for p in zip(ids, ids[1:]))
        top = max(counts, key=counts.get)
        merges[top] = new_id
        chunks = _merge_all(chunks, top, new_id)
    return merges


def test_check_3_2_passes_on_a_correct_answer(capsys):
    check_3_2(train_bpe)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (counts_once, "count the pairs again"),
    (lambda t, n, s: train_bpe(t, n, s, first_id=255), "start at 256"),
    (lambda t, n, s: train_bpe(t, n, s, split=False), "must not cross chunk boundaries"),
    (lambda t, n, s: train_bpe(t, n, s, tie=lambda p, c=None: p), "Exercise 3.2"),  # largest wins
    (crashes_when_no_pair_is_left, "raised ValueError"),
    (lambda t, n, s: train_bpe(t, n, s, cut=False), "Cut the special tokens out"),
    (lambda t, n, s: train_bpe(t, n), "Cut the special tokens out"),  # ignores the specials
    (lambda t, n, s: list(train_bpe(t, n, s).items()), "return a dict"),
])
def test_check_3_2_rejects_mistakes(wrong, fragment):
    fails_with(check_3_2, wrong, fragment)


def test_check_3_2_names_the_tie_rule():
    def ties_to_the_largest_pair(text, num_merges, specials):
        chunks = [list(c.encode("utf-8")) for c in regex.findall(GPT2_PATTERN, text)]
        merges = {}
        for new_id in range(256, 256 + num_merges):
            counts = Counter(p for ids in chunks for p in zip(ids, ids[1:]))
            if not counts:
                break
            top = max(counts, key=lambda p: (counts[p], p))
            merges[top] = new_id
            chunks = _merge_all(chunks, top, new_id)
        return merges
    fails_with(check_3_2, ties_to_the_largest_pair, "seen first")


# --- 3.3 encode -----------------------------------------------------------------------------

def _split_specials(text, specials):
    if not specials:
        return [text]
    alternatives = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    return regex.split(f"({alternatives})", text)


def _by_rank(ids, merges):
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = merge(ids, pair, merges[pair])
    return ids


def _leftmost(ids, merges):  # merges the first mergeable pair in the chunk, whatever its rank
    while (pair := next((p for p in zip(ids, ids[1:]) if p in merges), None)) is not None:
        ids = merge(ids, pair, merges[pair])
    return ids


def encode(text, merges, specials, chunk=_by_rank, keep_specials=True, split=True):
    out = []
    for k, part in enumerate(_split_specials(text, specials) if keep_specials else [text]):
        if k % 2:
            out.append(specials[part])
            continue
        for c in (regex.findall(GPT2_PATTERN, part) if split else [part]):
            out.extend(chunk(list(c.encode("utf-8")), merges))
    return out


def _split_unsorted(text, specials):  # the alternation in the dict's order, not longest first
    alternatives = "|".join(regex.escape(s) for s in specials)
    return regex.split(f"({alternatives})", text)


def drops_specials(text, merges, specials):
    parts = _split_specials(text, specials)[::2]
    return [i for p in parts for i in encode(p, merges, {})]


def test_check_3_3_passes_on_a_correct_answer(capsys):
    check_3_3(encode)
    assert "passed" in capsys.readouterr().out


def test_check_3_3_accepts_merges_replayed_in_rank_order_over_the_whole_chunk():
    def rank_order(ids, merges):
        for pair, new_id in sorted(merges.items(), key=lambda kv: kv[1]):
            ids = merge(ids, pair, new_id)
        return ids
    check_3_3(lambda t, m, s: encode(t, m, s, chunk=rank_order))


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda t, m, s: encode(t, m, s, chunk=_leftmost), "lowest rank"),
    (lambda t, m, s: encode(t, m, s, keep_specials=False), "one id"),
    (drops_specials, "should be"),
    (lambda t, m, s: [i for k, p in enumerate(_split_unsorted(t, s)) for i in (
        [s[p]] if k % 2 else encode(p, m, {}))], "longest first"),
    (lambda t, m, s: encode(t, m, s, split=False), "chunk boundary"),
    (lambda t, m, s: encode(t, m, s, chunk=lambda ids, merges: ids), "lowest rank"),  # no merges
    (lambda t, m, s: "".join(map(str, encode(t, m, s))), "list of ids"),
])
def test_check_3_3_rejects_mistakes(wrong, fragment):
    fails_with(check_3_3, wrong, fragment)


# --- 3.4 sliding_windows ---------------------------------------------------------

def sliding_windows(ids, t, stride):
    starts = range(0, len(ids) - t, stride)
    if not starts:
        raise ValueError("too short")
    data = torch.tensor(ids)
    return (torch.stack([data[s:s + t] for s in starts]), torch.stack([data[s + 1:s + t + 1] for s in starts]))


def test_check_3_4_passes_on_a_correct_answer(capsys):
    check_3_4(sliding_windows)
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
def test_check_3_4_rejects_mistakes(wrong, fragment):
    fails_with(check_3_4, wrong, fragment)
