"""Self-checks for chapter 2's exercises: Gopher's stop-word rule, shingle Jaccard, LSH bands and rows."""
from __future__ import annotations

from collections.abc import Callable

from ..data.dedup import candidate_probability, jaccard, lsh_params, shingles
from ._core import as_scalar, call, fail, passed

__all__ = ["check_2_1", "check_2_2", "check_2_3"]


def check_2_1(enough_stop_words: Callable[..., bool]) -> None:
    """enough_stop_words(text, min_count=2) -> True when >= min_count different Gopher stop words occur."""
    ex = "2.1"

    def run(text: str, min_count: int = 2) -> bool:
        got = call(ex, enough_stop_words, text, min_count)
        if not isinstance(got, bool) and type(got).__name__ != "bool_":
            fail(ex, f"return True or False, got {type(got).__name__}"
                     + (": did you forget to return?" if got is None else ""))
        return bool(got)

    if not run("The cat and the hat"):
        fail(ex, "'The cat and the hat' has two different stop words (the, and): expect True.")
    if not run("THE cat AND hat"):
        fail(ex, "'THE cat AND hat' has two stop words once lower-cased (the, and): expect True. "
                 "Did you forget to lower-case each word?")
    if run("the the the"):
        fail(ex, "'the the the' holds only one *different* stop word: count distinct words, not occurrences.")
    if not run("Rest, the. And, so."):
        fail(ex, "'Rest, the. And, so.' has 'the' and 'and': strip punctuation such as ',' and '.' from the ends "
                 "of each word before comparing.")
    if run("theatre and thee"):
        fail(ex, "'theatre and thee' has only one stop word ('and'): compare whole words, not substrings "
                 "('the' is inside 'theatre').")
    if run("", 2) or not run("", 0):
        fail(ex, "an empty text has no stop words: False for min_count=2, True for min_count=0.")
    if run("to be or not to be", 3) or not run("to be or not to be", 2):
        fail(ex, "'to be or not to be' has two different stop words (to, be): respect min_count (False at 3, True at 2).")
    if not run("Bread, milk... WITH eggs; TO go!"):
        fail(ex, "'Bread, milk... WITH eggs; TO go!' has 'with' and 'to' once cleaned: expect True.")
    passed(ex, "distinct words, case, punctuation, whole words, empty text and min_count all handled.")


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
            hint = " You got 1/3: did you drop the last n-gram (range(len(words) - n) instead of - n + 1)?"
        elif abs(got - 1.0) < 1e-9:
            hint = (" You got 1.0, yet the last bigrams differ ('c d' vs 'c e'): did you drop the last n-gram "
                    "(range(len(words) - n) instead of - n + 1)?")
        elif abs(got - 0.6) < 1e-9:
            hint = " You got 0.6: these look like single words (or characters), not word bigrams."
        fail(ex, f"'a b c d' vs 'a b c e' with n=2: bigrams {{ab, bc, cd}} and {{ab, bc, ce}} share 2 of 4, "
                 f"so expect 0.5, got {got:.4f}.{hint}")
    if abs(run("To be, or NOT to be", "to be or not to be", 3) - 1.0) > 1e-9:
        fail(ex, "'To be, or NOT to be' and 'to be or not to be' differ only in case and punctuation: expect 1.0. "
                 "Use re.findall(r'\\w+', text.lower()).")
    got = run("a a a a b", "a a b", 2)
    if abs(got - 1.0) > 1e-9:
        fail(ex, f"'a a a a b' and 'a a b' have the same *set* of bigrams {{aa, ab}}: expect 1.0, got {got:.4f}. "
                 "Use sets, not lists or counts.")
    if abs(run("short", "short", 5) - 1.0) > 1e-9 or abs(run("too short", "not it", 5)) > 1e-9:
        fail(ex, "a text shorter than n words is one shingle of all its words: 'short' vs 'short' is 1.0 and "
                 "'too short' vs 'not it' is 0.0 at n=5.")
    if abs(run("", "", 3) - 1.0) > 1e-9 or abs(run("", "a b c", 3)) > 1e-9:
        fail(ex, "two empty texts have similarity 1.0 (by convention), and an empty text vs a non-empty one 0.0.")
    a = ("My liege, the Duke of Buckingham is taken; That is the best news: that the Earl of Richmond "
         "Is with a mighty power landed at Milford, Is colder tidings, yet they must be told.")
    b = a.replace("mighty", "great").replace("colder", "cold")
    for n in (1, 3, 5):
        want = jaccard(shingles(a, n), shingles(b, n))
        if abs(run(a, b, n) - want) > 1e-9:
            fail(ex, f"on two edited sentences with n={n} expected {want:.4f} (the companion's jaccard(shingles(...))), "
                     f"got {run(a, b, n):.4f}.")
    passed(ex, "matches hand-worked bigrams, ignores case and punctuation, uses sets, handles short and empty texts, "
               "and agrees with the companion at n = 1, 3, 5.")


def check_2_3(pick_bands_rows: Callable[..., tuple[int, int]]) -> None:
    """pick_bands_rows(threshold, num_perm, recall) -> (bands, rows): the most rows meeting the recall."""
    ex = "2.3"

    def run(threshold: float, num_perm: int, recall: float = 0.995) -> tuple[int, int]:
        got = call(ex, pick_bands_rows, threshold, num_perm, recall)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            fail(ex, f"return a pair (bands, rows), got {got!r}")
        return int(got[0]), int(got[1])

    for threshold, num_perm, recall in ((0.8, 128, 0.995), (0.5, 128, 0.995), (0.9, 256, 0.99), (0.7, 64, 0.9)):
        want = lsh_params(threshold, num_perm, recall)
        got = run(threshold, num_perm, recall)
        if got == want:
            continue
        b, r = got
        if (r, b) == want:
            fail(ex, f"for threshold {threshold}, num_perm {num_perm} you returned {got}: bands and rows are swapped; "
                     f"return (bands, rows) = {want}.")
        if b * r > num_perm:
            fail(ex, f"{b} bands x {r} rows = {b * r} hash values, more than num_perm={num_perm}: use bands = num_perm // rows.")
        p = float(candidate_probability(threshold, b, r))
        if p < recall:
            fail(ex, f"with (bands, rows) = {got}, pairs at {threshold} become candidates with probability {p:.4f}, "
                     f"below the recall {recall}: check the direction of your comparison.")
        if r < want[1]:
            fail(ex, f"for threshold {threshold}, num_perm {num_perm}, recall {recall} you returned {got}, but {want} "
                     "meets the recall with more rows (fewer chance candidates): keep the *largest* rows that works.")
        fail(ex, f"for threshold {threshold}, num_perm {num_perm}, recall {recall} expected {want}, got {got}.")
    passed(ex, "the same (bands, rows) as lsh_params at four thresholds, sizes and recalls.")
