"""The labeled crawl: deterministic, every defect planted as recorded, duplicates after their sources."""
from __future__ import annotations

from collections import Counter

import pytest

from companion.data import DEFECTS, make_crawl
from companion.data.crawl import passages
from companion.data.dedup import jaccard, shingles

CRAWL = make_crawl(2000, seed=0)


def test_same_seed_same_crawl_other_seed_other_crawl():
    again = make_crawl(2000, seed=0)
    assert [d.html for d in again] == [d.html for d in CRAWL]
    assert [d.html for d in make_crawl(2000, seed=1)] != [d.html for d in CRAWL]


def test_every_defect_is_planted_in_its_share():
    counts = Counter(d.defect for d in CRAWL)
    assert set(counts) == set(DEFECTS) | {"clean"}
    assert counts["exact_dup"] == 160 and counts["near_dup"] == 200 and counts["clean"] >= 1000


def test_duplicates_come_after_their_source_and_copy_it():
    for i, d in enumerate(CRAWL):
        if d.defect in ("exact_dup", "near_dup"):
            src = CRAWL[d.dup_of]
            assert d.dup_of < i and src.defect == "clean"
            if d.defect == "exact_dup":
                assert d.text == src.text and d.url != src.url
            else:
                assert d.text != src.text and jaccard(shingles(d.text), shingles(src.text)) > 0.7
        else:
            assert d.dup_of is None


def test_most_near_duplicates_are_above_0_8_jaccard():
    sims = [jaccard(shingles(d.text), shingles(CRAWL[d.dup_of].text)) for d in CRAWL if d.defect == "near_dup"]
    assert sum(s >= 0.8 for s in sims) / len(sims) >= 0.9


def test_recorded_pii_appears_in_the_page():
    pii = [d for d in CRAWL if d.defect == "pii"]
    assert all(d.pii and all(v in d.text and v in d.html for v in d.pii) for d in pii)
    assert all(not d.pii for d in CRAWL if d.defect != "pii")


def test_pages_are_wrapped_in_boilerplate():
    for d in CRAWL[:50]:
        assert "<script" in d.html and "<style>" in d.html and "cookie" in d.html and "All rights reserved" in d.html


def test_mojibake_pages_are_garbled_and_text_is_the_repair():
    for d in (d for d in CRAWL if d.defect == "mojibake"):
        assert "\u00e2\u20ac" in d.html and "\u2019" in d.text


def test_passages_hand_worked():
    assert passages("A:\nHi there.\n\nB:\nBye.", 1, 9) == [["A: Hi there. B: Bye."]]
    with pytest.raises(ValueError, match="min_words"):
        passages("x", 5, 2)


@pytest.mark.parametrize("n, err", [(10, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_sizes_are_rejected(n, err):
    with pytest.raises(err, match="n_docs"):
        make_crawl(n)
