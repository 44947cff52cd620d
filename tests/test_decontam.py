"""GPT-3's 13-gram overlap test: hand-worked n-grams, and a planted leak found among clean examples."""
from __future__ import annotations

import pytest

from companion.data import make_crawl
from companion.data.decontam import ngram_index, overlap_report, word_ngrams


def test_word_ngrams_hand_worked():
    assert word_ngrams("To be, or NOT", 2) == [("to", "be"), ("be", "or"), ("or", "not")]
    assert word_ngrams("too short", 13) == []
    with pytest.raises(ValueError, match="positive"):
        word_ngrams("a", 0)


def test_overlap_report_hand_worked():
    # "x a b c" has 3-grams (x a b) and (a b c); only the second is in "a b c d".
    assert overlap_report(["a b c d"], ["x a b c"], 3) == [
        {"index": 0, "ngrams": 2, "shared": 1, "fraction": 0.5, "dirty": True}]
    assert overlap_report(ngram_index(["a b c d"], 3), ["a b"], 3)[0]["dirty"] is False


def test_planted_leak_is_the_only_dirty_example():
    crawl = make_crawl(300, seed=0)
    texts = [d.text for d in crawl if d.defect == "clean"]
    train, held = texts[:150], texts[150:200]
    leak = " ".join(train[7].split()[20:45])  # 25 words copied from a training page
    evals = [f"Question {i}: " + h for i, h in enumerate(held)] + [f"Question: {leak} Answer?"]
    dirty = [r["index"] for r in overlap_report(train, evals)]
    dirty = [r["index"] for r in overlap_report(train, evals) if r["dirty"]]
    assert dirty == [len(evals) - 1]
