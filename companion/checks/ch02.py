"""Self-checks for chapter 2's exercises: a C4 rule, shingle Jaccard, LSH bands and rows, LSH
clusters,
and a decontamination test."""
from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from ..data.decontam import overlap_report
from ..data.dedup import (candidate_probability, jaccard, lsh_candidate_pairs, lsh_params,
                          minhash_signatures, shingles, union_find_clusters)
from ._core import as_scalar, call, fail, passed

__all__ = ["check_2_1", "check_2_2", "check_2_3", "check_2_4", "check_2_5"]


_END_MARKS = (".", "!", "?", '"')
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
           "use cookies")
_SENTENCE_END = re.compile(r'[.!?]["\u201d\']*(?=\s|$)')


def _c4_reference(text: str) -> bool:
    """C4's clean_page (TFDS c4_utils) as the exercise states it: True = reject the page.

    Example: _c4_reference("Too short.") -> True
    """
    sentences = 0
    for line in text.splitlines():
        line = line.strip()
        if not line.endswith(_END_MARKS) or line.endswith("...") or len(line.split()) < 5:
            continue
        low = line.lower()
        if "lorem ipsum" in low:
            return True
        if "javascript" in low:
            continue
        if "{" in line:
            return True
        if any(p in low for p in _POLICY):
            continue
        # C4 counts sentences with NLTK's Punkt; a word ending in . ! or ? stands in for it
        sentences += max(1, len(_SENTENCE_END.findall(line)))
    return sentences < 3


def check_2_1(c4_rejects: Callable[..., bool]) -> None:
    """c4_rejects(text) -> True when C4's rules drop the page; then scored on the crawl."""
    ex = "2.1"

    def run(text: str) -> bool:
        got = call(ex, c4_rejects, text)
        if not isinstance(got, bool) and type(got).__name__ != "bool_":
            fail(ex, f"return True (reject) or False (keep), got {type(got).__name__}"
                     + (": did you forget to return?" if got is None else ""))
        return bool(got)

    lines = ["The king walked to the castle with his court.",
             "The fool sang of the river that runs to the sea!",
             "Who would have thought the old man had so much blood?"]
    good = "\n".join(lines)
    if run(good):
        fail(ex, "three lines of five or more words, each ending in . ! or ?, hold three "
                 "sentences, a page C4 keeps: expect False.")
    if run(" ".join(lines)):
        fail(ex, "one line of three sentences keeps the page: C4 counts sentences, not lines "
                 "(expect False).")
    if not run(good.replace("castle with his court.", "castle with his court")):
        fail(ex, "a line that does not end in terminal punctuation is dropped, leaving two "
                 "sentences: expect True. Check the *end* of each line, after stripping spaces.")
    if not run(good.replace("castle with his court.", "castle with his court...")):
        fail(ex, "a line ending in '...' is dropped (an ellipsis is not an end mark), leaving "
                 "two sentences: expect True.")
    if run(good.replace(lines[0], "The king walked home slowly.")):
        fail(ex, "'The king walked home slowly.' has exactly 5 words, enough: expect False "
                 "(at least 5, not more than 5).")
    short = good.replace(lines[0], "Long live the king.")
    if not run(short):
        fail(ex, "'Long live the king.' has four words; C4 keeps only lines of at least 5 words, "
                 "so two sentences remain: expect True.")
    if not run(good + "\nfunction f() { return 1; } is shown here as code."):
        fail(ex, "a kept line containing a curly bracket '{' drops the page (it is probably "
                 "code): expect True.")
    if run(good + "\nfunction f() { return 1; }"):
        fail(ex, "a curly bracket in a line already skipped (no end mark) does not drop the "
                 "page: C4 tests '{' only in the lines that pass the end-mark and length tests. "
                 "Expect False.")
    if not run(good + "\nLorem Ipsum dolor sit amet, consectetur adipiscing elit."):
        fail(ex, "a kept line containing 'lorem ipsum' (in any case) drops the page: "
                 "expect True.")
    js = good.replace(lines[1], "Please enable JavaScript to view this page properly.")
    if not run(js):
        fail(ex, "a line mentioning JavaScript (any case) is dropped, leaving two sentences: "
                 "expect True.")
    policy = good.replace(lines[1], "By using this site you agree to our Terms of Use.")
    if not run(policy):
        fail(ex, "a line with a policy phrase ('terms of use', ...) is dropped, leaving two "
                 "sentences: expect True.")
    if run(good.replace("\n", "  \n\n  ") + "  "):
        fail(ex, "blank lines and leading spaces are not lines of text: the three sentences still "
                 "make the page kept. Strip each line before testing it.")
    quoted = good.rsplit("\n", 1)[0] + '\nHe said, "these words are spoken in quotation marks"'
    if run(quoted):
        fail(ex, 'a line ending in a closing quotation mark " counts as terminal punctuation: '
                 "expect False.")
    from ..data import html_to_text, make_crawl, normalize_text
    crawl = make_crawl(300, seed=0)
    texts = [normalize_text(html_to_text(d.html)) for d in crawl]
    for d, t in zip(crawl, texts):
        if run(t) != _c4_reference(t):
            fail(ex, f"on crawl page {d.url} (defect {d.defect!r}) you returned {run(t)}, C4's "
                     f"rules give {_c4_reference(t)}. The page starts: {t[:120]!r}")
    bad = [d.defect in ("spam", "low_quality") for d in crawl]
    pred = [run(t) for t in texts]
    tp = sum(b and p for b, p in zip(bad, pred))
    fp = sum(p and not b for b, p in zip(bad, pred))
    fn = sum(b and not p for b, p in zip(bad, pred))
    passed(ex, f"C4's rules as stated. On 300 crawl pages they reject {tp + fp}: precision "
               f"{tp / max(tp + fp, 1):.2f} (tp {tp}, fp {fp}), recall {tp / max(tp + fn, 1):.2f} "
               f"(fn {fn}) against the planted spam and low-quality pages.")


def check_2_2(shingle_jaccard: Callable[..., float]) -> None:
    """shingle_jaccard(a, b, n) -> Jaccard similarity of the word n-gram sets of a and b."""
    ex = "2.2"

    def run(a: str, b: str, n: int) -> float:
        return as_scalar(ex, call(ex, shingle_jaccard, a, b, n), "the similarity")

    got = run("a b c d", "a b c e", 2)
    if abs(got - 0.5) > 1e-9:
        hint = ""
        if abs(got - 2 / 3) < 1e-9:
            hint = " You got 2/3: did you divide by the size of one set instead of the union?"
        elif abs(got - 1 / 3) < 1e-9:
            hint = (" You got 1/3: did you drop the last n-gram (range(len(words) - n) instead of"
                    " - n + 1)?")
        elif abs(got - 1.0) < 1e-9:
            hint = (" You got 1.0, yet the last bigrams differ ('c d' vs 'c e'): did you drop the "
                    "last n-gram "
                    "(range(len(words) - n) instead of - n + 1)?")
        elif abs(got - 0.6) < 1e-9:
            hint = " You got 0.6: these look like single words (or characters), not word bigrams."
        fail(ex, f"'a b c d' vs 'a b c e' with n=2: bigrams {{ab, bc, cd}} and {{ab, bc, ce}} "
                 f"share 2 of 4, "
                 f"so expect 0.5, got {got:.4f}.{hint}")
    if abs(run("To be, or NOT to be", "to be or not to be", 3) - 1.0) > 1e-9:
        fail(ex, "'To be, or NOT to be' and 'to be or not to be' differ only in case and "
                 "punctuation: expect 1.0. "
                 "Use re.findall(r'\\w+', text.lower()).")
    got = run("a a a a b", "a a b", 2)
    if abs(got - 1.0) > 1e-9:
        fail(ex, f"'a a a a b' and 'a a b' have the same *set* of bigrams {{aa, ab}}: expect 1.0, "
                 f"got {got:.4f}. "
                 "Use sets, not lists or counts.")
    if abs(run("short", "short", 5) - 1.0) > 1e-9 or abs(run("too short", "not it", 5)) > 1e-9:
        fail(ex, "a text shorter than n words is one shingle of all its words: 'short' vs 'short' "
                 "is 1.0 and "
                 "'too short' vs 'not it' is 0.0 at n=5.")
    if abs(run("", "", 3) - 1.0) > 1e-9 or abs(run("", "a b c", 3)) > 1e-9:
        fail(ex, "two empty texts have similarity 1.0 (by convention), and an empty text vs a "
                 "non-empty one 0.0.")
    a = ("My liege, the Duke of Buckingham is taken; That is the best news: that the Earl of "
         "Richmond "
         "Is with a mighty power landed at Milford, Is colder tidings, yet they must be told.")
    b = a.replace("mighty", "great").replace("colder", "cold")
    for n in (1, 3, 5):
        want = jaccard(shingles(a, n), shingles(b, n))
        if abs(run(a, b, n) - want) > 1e-9:
            fail(ex, f"on two edited sentences with n={n} expected {want:.4f} (the companion's "
                     f"jaccard(shingles(...))), "
                     f"got {run(a, b, n):.4f}.")
    passed(ex, "matches hand-worked bigrams, ignores case and punctuation, uses sets, handles "
               "short and empty texts, "
               "and agrees with the companion at n = 1, 3, 5.")


def check_2_3(pick_bands_rows: Callable[..., tuple[int, int]]) -> None:
    """pick_bands_rows(threshold, num_perm, recall) -> (bands, rows): most rows that meet recall."""
    ex = "2.3"

    def run(threshold: float, num_perm: int, recall: float = 0.995) -> tuple[int, int]:
        got = call(ex, pick_bands_rows, threshold, num_perm, recall)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            fail(ex, f"return a pair (bands, rows), got {got!r}")
        return int(got[0]), int(got[1])

    # the last case's answer is rows = num_perm // 2 itself: the end of the range is included
    cases = ((0.8, 128, 0.995), (0.5, 128, 0.995), (0.9, 256, 0.99), (0.7, 64, 0.9),
             (0.99, 8, 0.9))
    for threshold, num_perm, recall in cases:
        want = lsh_params(threshold, num_perm, recall)
        got = run(threshold, num_perm, recall)
        if got == want:
            continue
        b, r = got
        if (r, b) == want:
            fail(ex, f"for threshold {threshold}, num_perm {num_perm} you returned {got}: bands "
                     f"and rows are swapped; "
                     f"return (bands, rows) = {want}.")
        if b * r > num_perm:
            fail(ex, f"{b} bands x {r} rows = {b * r} hash values, more than num_perm={num_perm}: "
                     f"use bands = num_perm // rows.")
        p = float(candidate_probability(threshold, b, r))
        if p < recall:
            fail(ex, f"with (bands, rows) = {got}, pairs at {threshold} become candidates with "
                     f"probability {p:.4f}, "
                     f"below the recall {recall}: check the direction of your comparison.")
        end = (" rows runs from 1 to num_perm // 2 inclusive: range(1, num_perm // 2 + 1)."
               if want[1] == num_perm // 2 else "")
        if r < want[1]:
            fail(ex, f"for threshold {threshold}, num_perm {num_perm}, recall {recall} you "
                     f"returned {got}, but {want} "
                     "meets the recall with more rows (fewer chance candidates): keep the "
                     "*largest* rows that works." + end)
        fail(ex, f"for threshold {threshold}, num_perm {num_perm}, recall {recall} expected "
                 f"{want}, got {got}.{end}")
    passed(ex, "the same (bands, rows) as lsh_params at five thresholds, sizes and recalls, "
               "rows = num_perm // 2 included.")


def check_2_4(lsh_clusters: Callable[..., list[int]]) -> None:
    """lsh_clusters(signatures, bands, rows) -> cluster label (smallest member) of each document."""
    ex = "2.4"

    def run(sig: np.ndarray, bands: int, rows: int) -> list[int]:
        got = call(ex, lsh_clusters, sig, bands, rows)
        try:
            got = [int(x) for x in got]
        except TypeError:
            fail(ex, f"return a list of one int label per document, got {type(got).__name__}"
                     + (": did you forget to return?" if got is None else ""))
        if len(got) != len(sig):
            fail(ex, f"return one label per document: {len(sig)} documents, got {len(got)} labels")
        return got

    # Hand-worked: 5 documents, 2 bands of 2 rows. 0 and 1 share band 0; 1 and 2 share band 1;
    # 3 and 4 share nothing. So {0, 1, 2} is one cluster (through 1), 3 and 4 are alone.
    sig = np.array([[1, 2, 3, 4], [1, 2, 5, 6], [7, 8, 5, 6], [1, 9, 9, 4], [0, 2, 3, 0]],
                   dtype=np.uint32)
    got = run(sig, 2, 2)
    if got != [0, 0, 0, 3, 4]:
        hint = ""
        if got == [0, 0, 1, 3, 4]:
            hint = (" Document 2 is linked to 0 through 1: clusters follow chains (union-find),"
                    " not only direct pairs.")
        elif got[3] == 0 or got[4] == 0:
            hint = (" Documents 3 and 4 share single values with 0 but no whole band (band k is "
                    "columns"
                    " k*rows to (k+1)*rows): a bucket key is one band's rows together.")
        elif sorted(set(got)) != [0, 3, 4] and len(set(got)) == 3:
            hint = (" Name each cluster by its smallest member (hang the larger root under the"
                    " smaller).")
        fail(ex, f"on the hand-worked 5x4 signatures with 2 bands of 2 rows, expect [0, 0, 0, 3, "
                 f"4], got {got}."
                 + hint)
    if run(sig, 1, 4) != [0, 1, 2, 3, 4]:
        fail(ex, "with 1 band of all 4 rows no two of the hand-worked signatures agree everywhere: "
                 "expect [0, 1, 2, 3, 4]. Use rows k*rows to (k+1)*rows for band k.")
    words = [f"w{i}" for i in range(400)]
    sets = [set(words[i: i + 60]) for i in range(0, 300, 3)]  # overlapping windows: chains
    sig = minhash_signatures(sets, 64)
    for bands, rows in ((16, 4), (8, 8), (21, 3)):
        want = union_find_clusters(len(sig), lsh_candidate_pairs(sig, bands, rows))
        got = run(sig, bands, rows)
        if got != want:
            fail(ex, f"on 100 overlapping sets with {bands} bands of {rows} rows, your clusters "
                     f"differ from "
                     f"union_find_clusters(lsh_candidate_pairs(...)) at documents "
                     f"{[i for i in range(len(want)) if got[i] != want[i]][:8]}.")
    passed(ex, "bucketing by band and union-find clusters match the companion on hand-worked and "
               "MinHash "
               "signatures, chains included.")


def check_2_5(dirty_items: Callable[..., list[int]]) -> None:
    """dirty_items(train_docs, eval_docs, n=13) -> indices of evaluation texts sharing an n-gram."""
    ex = "2.5"

    def run(train: list[str], evals: list[str], n: int = 13) -> list[int]:
        got = call(ex, dirty_items, train, evals, n)
        try:
            return sorted(int(i) for i in got)
        except TypeError:
            fail(ex, f"return a list of indices, got {type(got).__name__}"
                     + (": did you forget to return?" if got is None else ""))

    train = ["the quick brown fox jumps over the lazy dog near the river bank today"]
    if run(train, ["a b c", "fox jumps over the"], 3) != [1]:
        fail(ex, "with n=3, 'fox jumps over the' shares 'fox jumps over' with the training text: "
                 "expect [1].")
    if run(train, ["The QUICK brown, fox!"], 3) != [0]:
        fail(ex, "compare lower-cased words with punctuation dropped: 'The QUICK brown, fox!' "
                 "shares "
                 "'the quick brown' (use re.findall(r'\\w+', text.lower())).")
    if run(train, ["quick brown"], 3) != []:
        fail(ex, "an evaluation text shorter than n words has no n-gram, so it is never dirty: "
                 "expect [].")
    if run(train, ["the lazy river", "dog fox quick"], 3) != []:
        fail(ex, "sharing words is not enough: the n words must be consecutive and in order. "
                 "Expect [].")
    if run(train, ["over the lazy dog"], 4) != [0]:
        fail(ex, "'over the lazy dog' is itself a training 4-gram (the last n-gram of the "
                 "evaluation text "
                 "counts too): expect [0]. Check the range of start positions.")
    if run(train, ["the river bank today"], 4) != [0]:
        fail(ex, "'the river bank today' is the last 4-gram of the training text: index every "
                 "training "
                 "n-gram, the last included.")
    if run(["a b c d"], ["x c d"], 3) != []:
        fail(ex, "with n=3, 'x c d' shares no 3-gram with 'a b c d': expect []. A start "
                 "position past len(words) - n gives a shorter tail ('c d'), which is not an "
                 "n-gram; stop at len(words) - n + 1.")
    if run(["the quick brown fox", "jumps over the dog"], ["brown fox jumps over"], 3) != []:
        fail(ex, "'fox jumps over' runs across the boundary between two training documents, "
                 "which no document contains: expect []. Take n-grams within each document, "
                 "not over the documents joined.")
    crawl_train = ["word%d " % i * 1 + " ".join(f"t{i}_{k}" for k in range(30)) for i in range(20)]
    leak = " ".join(crawl_train[5].split()[4:20])
    evals = [" ".join(f"e{i}_{k}" for k in range(20)) for i in range(10)] + [f"Q: {leak}?"]
    want = [r["index"] for r in overlap_report(crawl_train, evals, 13) if r["dirty"]]
    if run(crawl_train, evals, 13) != want:
        fail(ex, f"with a planted 16-word leak among 11 evaluation texts expected {want}, "
                 f"got {run(crawl_train, evals, 13)}.")
    passed(ex, "n-gram overlap as GPT-3's Appendix C defines it (GPT-3 picks n per benchmark, "
               "8 to 13): case, punctuation, order, short texts, document boundaries and the "
               "last n-gram all handled; the planted leak is found.")
