"""Exact and near-duplicate removal: hand-worked cases, datasketch parity, and the chapter's targets on the crawl."""
from __future__ import annotations

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from companion.data import (candidate_probability, estimate_jaccard, exact_dedup, jaccard, lsh_candidate_pairs,
                            lsh_params, make_crawl, minhash_signatures, near_dedup, shingles)
from companion.data.clean import html_to_text, normalize_text


CRAWL = make_crawl(2000, seed=0)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """The crawl's pages as extracted text; CRAWL holds their ground truth."""
    return [normalize_text(html_to_text(d.html)) for d in CRAWL]


# --- hand-worked cases -----------------------------------------------------------------------------

def test_exact_dedup_keeps_the_first_of_equal_normalized_texts():
    # "A  b" folds to "a b" (case and whitespace), so index 1 duplicates 0; "c" is new; "a b\n" repeats 0 again.
    assert exact_dedup(["a b", "A  b", "c", "a b\n"]) == [0, 2]


def test_shingles_are_word_ngrams_of_lowercased_text():
    # 6 words give 6 - 3 + 1 = 4 trigrams; punctuation and case are dropped.
    assert shingles("To be, or NOT to be", 3) == {"to be or", "be or not", "or not to", "not to be"}
    assert shingles("too short", 5) == {"too short"}
    assert shingles("", 5) == set()


def test_jaccard_hand_worked():
    # {1,2,3} and {2,3,4}: intersection {2,3} (2), union {1,2,3,4} (4) -> 0.5.
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) == 1.0
    assert jaccard({1}, {2}) == 0.0


def test_s_curve_hand_worked():
    # b=2, r=2, s=0.5: 1 - (1 - 0.25)**2 = 1 - 0.5625 = 0.4375.
    assert candidate_probability(0.5, 2, 2) == pytest.approx(0.4375)
    assert candidate_probability(1.0, 20, 6) == 1.0 and candidate_probability(0.0, 20, 6) == 0.0


def test_lsh_params_catch_pairs_at_the_threshold():
    bands, rows = lsh_params(0.8, 128)
    assert bands * rows <= 128
    assert candidate_probability(0.8, bands, rows) >= 0.995
    # one more row per band (with the bands that still fit) would miss more than 0.5% of pairs at 0.8
    assert candidate_probability(0.8, 128 // (rows + 1), rows + 1) < 0.995


def test_near_dedup_hand_worked():
    # bigrams of "a b c d e f": 5; of "a b c d e f g": 6, the same 5 plus "f g" -> Jaccard 5/6 >= 0.8.
    assert near_dedup(["a b c d e f", "a b c d e f g", "x y z w v u"], threshold=0.8, ngram=2) == [0, 2]
    assert near_dedup(["a b c d e f", "a b c d e f g"], threshold=0.9, ngram=2) == [0, 1]


def test_near_dedup_keeps_a_doc_whose_only_match_was_removed():
    # 0 ~ 1 and 1 ~ 2, but 0 and 2 are not similar: 1 goes (matches kept 0); 2 stays (its match 1 is gone).
    base = [f"w{i}" for i in range(40)]
    d0 = " ".join(base)
    d1 = " ".join(base[:36] + ["x1", "x2", "x3", "x4"])
    d2 = " ".join(base[:32] + ["x1", "x2", "x3", "x4", "y1", "y2", "y3", "y4"])
    s = [shingles(d, 1) for d in (d0, d1, d2)]
    assert jaccard(s[0], s[1]) >= 0.8 and jaccard(s[1], s[2]) >= 0.8 and jaccard(s[0], s[2]) < 0.8
    assert near_dedup([d0, d1, d2], threshold=0.8, ngram=1) == [0, 2]


# --- agreement with datasketch ---------------------------------------------------------------------

def _datasketch(sets, num_perm):
    out = []
    for s in sets:
        m = MinHash(num_perm=num_perm)  # default scheme affine32, seed 1
        m.update_batch([x.encode("utf-8") for x in s])
        out.append(m)
    return out


def test_signatures_equal_datasketch_bit_for_bit(texts):
    sets = [shingles(t) for t in texts[:300]] + [set()]
    ours = minhash_signatures(sets, 128)
    theirs = np.stack([m.hashvalues for m in _datasketch(sets, 128)])
    assert ours.dtype == np.uint32 and ours.shape == (301, 128)
    assert np.array_equal(ours, theirs)


def test_candidate_pairs_equal_datasketch_lsh(texts):
    sets = [shingles(t) for t in texts]
    bands, rows = lsh_params(0.8, 128)
    ours = lsh_candidate_pairs(minhash_signatures(sets, 128), bands, rows)
    lsh = MinHashLSH(num_perm=128, params=(bands, rows))
    mins = _datasketch(sets, 128)
    for i, m in enumerate(mins):
        lsh.insert(i, m)
    theirs = {(min(i, j), max(i, j)) for i, m in enumerate(mins) for j in lsh.query(m) if j != i}
    assert len(ours) > 150  # the planted duplicates are there
    assert ours == theirs
    # and above the threshold: the verified pairs agree too
    above = {p for p in ours if jaccard(sets[p[0]], sets[p[1]]) >= 0.8}
    assert above == {p for p in theirs if jaccard(sets[p[0]], sets[p[1]]) >= 0.8}


def test_jaccard_estimates_within_tolerance(texts):
    # The estimate is a mean of 128 Bernoulli(J) draws: standard deviation <= 0.5 / sqrt(128) = 0.044.
    sets = [shingles(t) for t in texts]
    sig = minhash_signatures(sets, 128)
    pairs = [(i, d.dup_of) for i, d in enumerate(CRAWL) if d.defect == "near_dup"]
    involved = sorted({k for p in pairs for k in p})
    mins = dict(zip(involved, _datasketch([sets[k] for k in involved], 128)))
    errors = []
    assert len(pairs) >= 150
    for i, j in pairs:
        true = jaccard(sets[i], sets[j])
        est = estimate_jaccard(sig[i], sig[j])
        assert est == pytest.approx(mins[i].jaccard(mins[j]))
        errors.append(abs(est - true))
    assert max(errors) < 0.15 and np.mean(errors) < 0.05


# --- the chapter's targets on the crawl ----------------------------------------------------------

def test_exact_dedup_finds_planted_duplicates_without_false_positives(texts):
    kept = set(exact_dedup(texts))
    dups = [i for i, d in enumerate(CRAWL) if d.defect == "exact_dup"]
    others = [i for i, d in enumerate(CRAWL) if d.defect != "exact_dup"]
    assert sum(i not in kept for i in dups) / len(dups) >= 0.99
    assert sum(i not in kept for i in others) / len(others) <= 0.01


def test_near_dedup_finds_planted_near_duplicates_without_false_positives(texts):
    first = exact_dedup(texts)  # the pipeline's order: exact duplicates go first
    kept = {first[k] for k in near_dedup([texts[i] for i in first])}
    near = [i for i, d in enumerate(CRAWL) if d.defect == "near_dup"
            and jaccard(shingles(d.text), shingles(CRAWL[d.dup_of].text)) >= 0.8]
    negatives = [i for i in first if CRAWL[i].defect not in ("near_dup", "exact_dup")]
    assert len(near) >= 150
    assert sum(i not in kept for i in near) / len(near) >= 0.95
    assert sum(i not in kept for i in negatives) / len(negatives) <= 0.01


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [exact_dedup, near_dedup])
def test_empty_document_list_is_a_value_error(fn):
    with pytest.raises(ValueError, match="empty"):
        fn([])


@pytest.mark.parametrize("fn", [exact_dedup, near_dedup])
@pytest.mark.parametrize("docs", [["ok", 3], "a string, not a list", ["ok", None], [b"bytes"]])
def test_non_string_items_are_a_type_error(fn, docs):
    with pytest.raises(TypeError, match="str"):
        fn(docs)


@pytest.mark.parametrize("threshold", [0, 1, 1.5, -0.2])
def test_threshold_outside_open_unit_interval_is_a_value_error(threshold):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        near_dedup(["a b c", "a b d"], threshold=threshold)


def test_bad_num_perm_and_bands():
    with pytest.raises(ValueError, match="num_perm"):
        near_dedup(["a b c"], num_perm=1)
    with pytest.raises(TypeError, match="threshold"):
        near_dedup(["a b c"], threshold="0.8")
    with pytest.raises(ValueError, match="bands"):
        lsh_candidate_pairs(np.zeros((3, 8), dtype=np.uint32), 3, 3)


# --- union-find clustering of candidate pairs --------------------------------------------------------

from companion.data import union_find_clusters  # noqa: E402


def test_union_find_hand_worked():
    # 0 alone; 1-2-3 chained through (2, 3) then (1, 2); 4-5.
    assert union_find_clusters(6, [(2, 3), (1, 2), (5, 4)]) == [0, 1, 1, 1, 4, 4]
    assert union_find_clusters(0, []) == []
    with pytest.raises(ValueError, match="outside"):
        union_find_clusters(2, [(0, 2)])


def test_union_find_matches_connected_components_by_search():
    import random
    rng = random.Random(0)
    n = 60
    pairs = [(rng.randrange(n), rng.randrange(n)) for _ in range(40)]
    labels = union_find_clusters(n, pairs)
    adj = {i: set() for i in range(n)}
    for i, j in pairs:
        adj[i].add(j)
        adj[j].add(i)
    for start in range(n):  # each component by depth-first search: one label, its smallest member
        seen, stack = {start}, [start]
        while stack:
            for k in adj[stack.pop()] - seen:
                seen.add(k)
                stack.append(k)
        assert {labels[k] for k in seen} == {min(seen)}


# --- line-level dedup ------------------------------------------------------------------------------

def test_line_dedup_removes_lines_shared_by_documents_and_keeps_unique_ones():
    from companion.data import line_dedup
    docs = ["Home | About\n\nFirst article.\n\nCopyright 2024", "home |  about\n\nSecond one.\n\nCopyright 2024",
            "Third, alone.\n\nThird, alone."]
    # Case and spacing fold, so "home |  about" repeats "Home | About"; a line repeated inside
    # one document counts once and stays.
    assert line_dedup(docs) == ["First article.", "Second one.", "Third, alone.\n\nThird, alone."]


def test_line_dedup_threshold_spares_lines_in_fewer_documents():
    from companion.data import line_dedup
    docs = ["nav\nquote\na", "nav\nquote\nb", "nav\nc"]
    assert line_dedup(docs, min_docs=3) == ["quote\na", "quote\nb", "c"]
    assert line_dedup(docs, min_docs=2) == ["a", "b", "c"]
    assert line_dedup(docs, min_docs=4) == docs


def test_line_dedup_rejects_bad_arguments():
    from companion.data import line_dedup
    with pytest.raises(ValueError, match="at least 2"):
        line_dedup(["a"], min_docs=1)
    with pytest.raises(TypeError, match="list of str"):
        line_dedup("a b")
    with pytest.raises(TypeError, match="int"):
        line_dedup(["a"], min_docs=2.0)


def test_line_doc_counts_counts_documents_not_occurrences():
    from companion.data import line_doc_counts
    from companion.data.dedup import _line_key
    counts = line_doc_counts(["x\nx\ny", "X\nz", ""])
    assert counts[_line_key("x")] == 2 and counts[_line_key("y")] == 1 and len(counts) == 3
