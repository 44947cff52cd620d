"""Self-checks for chapter 2's exercises: a C4 rule, shingle Jaccard, LSH bands and rows, a
central-copy keep policy, and a decontamination test."""
from __future__ import annotations

import re
from collections.abc import Callable


from ..data.decontam import overlap_report
from ..data.dedup import candidate_probability, jaccard, lsh_params, shingles
from ._core import as_scalar, call, fail, passed

__all__ = ["check_2_1", "check_2_2", "check_2_3", "check_2_4", "check_2_5", "check_2_6"]


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
    short = good.replace(lines[0], "Long live the king.")
    js = good.replace(lines[1], "Please enable JavaScript to view this page properly.")
    policy = good.replace(lines[1], "By using this site you agree to our Terms of Use.")
    quoted = good.rsplit("\n", 1)[0] + '\nHe said, "these words are spoken in quotation marks"'
    # (page, C4 rejects it, what a wrong answer got wrong), tried in this order
    cases = [
        (good, False,
         "three lines of five or more words, each ending in . ! or ?, hold three "
         "sentences, a page C4 keeps: expect False."),
        (" ".join(lines), False,
         "one line of three sentences keeps the page: C4 counts sentences, not lines "
         "(expect False)."),
        (good.replace("castle with his court.", "castle with his court"), True,
         "a line that does not end in terminal punctuation is dropped, leaving two "
         "sentences: expect True. Check the *end* of each line, after stripping spaces."),
        (good.replace("castle with his court.", "castle with his court..."), True,
         "a line ending in '...' is dropped (an ellipsis is not an end mark), leaving "
         "two sentences: expect True."),
        (good.replace(lines[0], "The king walked home slowly."), False,
         "'The king walked home slowly.' has exactly 5 words, enough: expect False "
         "(at least 5, not more than 5)."),
        (short, True,
         "'Long live the king.' has four words; C4 keeps only lines of at least 5 words, "
         "so two sentences remain: expect True."),
        (good + "\nfunction f() { return 1; } is shown here as code.", True,
         "a kept line containing a curly bracket '{' drops the page (it is probably "
         "code): expect True."),
        (good + "\nfunction f() { return 1; }", False,
         "a curly bracket in a line already skipped (no end mark) does not drop the "
         "page: C4 tests '{' only in the lines that pass the end-mark and length tests. "
         "Expect False."),
        (good + "\nEnable JavaScript: the {menu} needs it to work.", False,
         "a line that mentions JavaScript is skipped before the curly-bracket test, so its "
         "'{' does not drop the page: C4 tests in the order lorem ipsum, javascript, '{', "
         "policy. Expect False."),
        (good + "\nRead our privacy policy {updated} before you go.", True,
         "the curly-bracket test comes before the policy test: a kept line with both a "
         "'{' and a policy phrase drops the page. Expect True."),
        (good + "\nLorem ipsum dolor", False,
         "'Lorem ipsum dolor' has no end mark and three words, so it is skipped before "
         "the lorem-ipsum test, which looks only at lines that pass the end-mark and "
         "length tests: expect False."),
        (good + "\nLorem Ipsum dolor sit amet, consectetur adipiscing elit.", True,
         "a kept line containing 'lorem ipsum' (in any case) drops the page: "
         "expect True."),
        (js, True,
         "a line mentioning JavaScript (any case) is dropped, leaving two sentences: "
         "expect True."),
        (policy, True,
         "a line with a policy phrase ('terms of use', ...) is dropped, leaving two "
         "sentences: expect True."),
        (good.replace("\n", "  \n\n  ") + "  ", False,
         "blank lines and leading spaces are not lines of text: the three sentences still "
         "make the page kept. Strip each line before testing it."),
        (quoted, False,
         'a line ending in a closing quotation mark " counts as terminal punctuation: '
         "expect False."),
    ]
    for text, rejects, why in cases:
        if run(text) != rejects:
            fail(ex, why)
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
        if any(float(x) != int(x) for x in got):  # int() would hide num_perm / rows = 21.33
            fail(ex, f"bands and rows are whole numbers, got {got!r}: bands = num_perm // rows "
                     "(floor division), not num_perm / rows.")
        return int(got[0]), int(got[1])

    # the last case's answer is rows = num_perm // 2 itself: the end of the range is included
    # (0.5, 4, 0.4375): rows = 2 gives exactly 1 - 0.75**2 = 0.4375 in floating point, so only
    # ">= recall" keeps it ("at least recall"); "> recall" falls back to one row
    cases = ((0.8, 128, 0.995), (0.5, 128, 0.995), (0.9, 256, 0.99), (0.7, 64, 0.9),
             (0.99, 8, 0.9), (0.5, 4, 0.4375))
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
        if r < want[1] and float(candidate_probability(threshold, *want)) == recall:
            fail(ex, f"for threshold {threshold}, num_perm {num_perm}, recall {recall}: {want} "
                     f"reaches the recall exactly, which meets it ('at least recall': >=, not "
                     f">). Expect {want}, got {got}.")
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
    passed(ex, "the same (bands, rows) as lsh_params at six thresholds, sizes and recalls, "
               "rows = num_perm // 2 and a recall met exactly included.")


def _keep_central(texts: list[str], labels: list, n: int = 5, score_by=sum,
                  first: bool = False) -> list[int]:
    """Each cluster's medoid (largest summed Jaccard to the others, ties to the smallest index).

    Example: _keep_central(["a b", "a b", "c"], [0, 0, 1], 1) -> [0, 2]
    """
    members: dict = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    keep = []
    for docs in members.values():
        sets = {i: shingles(texts[i], n) for i in docs}

        def score(i: int) -> float:
            return round(score_by([jaccard(sets[i], sets[j]) for j in docs if j != i] or [0.0]), 9)

        keep.append(docs[0] if first else max(docs, key=lambda i: (score(i), -i)))
    return sorted(keep)


def _edited_clusters(n_clusters: int = 20) -> tuple[list[str], list[int], list[int]]:
    """Originals from the crawl, each with three copies missing a different stretch of words,
    the original placed third: (texts, labels, index of each cluster's original)."""
    from ..data import html_to_text, make_crawl, normalize_text
    crawl = make_crawl(300, seed=0)
    pages = [normalize_text(html_to_text(d.html)) for d in crawl if d.defect == "clean"]
    texts, labels, originals = [], [], []
    for c, page in enumerate([p for p in pages if len(p.split()) >= 120][:n_clusters]):
        words = page.split()
        cut = len(words) // 8
        copies = [" ".join(words[:k * cut] + words[(k + 1) * cut:]) for k in (1, 3, 5)]
        for k, text in enumerate([copies[0], copies[1], page, copies[2]]):
            texts.append(text)
            labels.append(f"cluster {c}")
            if k == 2:
                originals.append(len(texts) - 1)
    return texts, labels, originals


def check_2_4(keep_central: Callable[..., list[int]]) -> None:
    """keep_central(texts, labels, n=5) -> sorted indices: each cluster's most central member."""
    ex = "2.4"

    def run(texts: list[str], labels: list, n: int) -> list[int]:
        got = call(ex, keep_central, list(texts), list(labels), n)
        try:
            kept = [int(x) for x in got]
        except (TypeError, ValueError):
            fail(ex, f"return a list of kept indices, got {got!r:.60}"
                     + (": did you forget to return?" if got is None else ""))
        if kept != sorted(kept):
            fail(ex, f"return the kept indices sorted, got {kept}")
        return kept

    # p..w twice (2 and 3), then edits of it: 1 has the largest sum, 2 and 3 the largest single
    five = ["p q r s t x y z", "p q r s t u v z", "p q r s t u v w", "p q r s t u v w",
            "p q r s t u y z"]
    got = run(five, ["c"] * 5, 1)
    if got != [1]:
        hint = ""
        if got == [0]:
            hint = " You kept the first member; keep the one most similar to all the others."
        elif got in ([2], [3]):
            hint = (" Documents 2 and 3 are identical, so each has one similarity of 1.0: you "
                    "scored by the largest single similarity; sum them over the other members.")
        fail(ex, f"with n=1 the summed similarities of {five!r} to the other members are "
                 f"largest for document 1: expect [1], got {got}.{hint}")
    # three copies in a row: the middle one is 7/9 similar to each neighbour, they 6/10
    row = ["a b c d e f y x", "a b c d e f g h", "a b c d e f g x"]
    got = run(row, [0, 0, 0], 1)
    if got != [2]:
        fail(ex, f"with n=1, {row!r} form one cluster; the last is 7/9 similar to each of the "
                 f"others, which are 6/10 similar to each other: expect [2], got {got}.")
    # the sum picks document 2; the largest *smallest* similarity would pick 3, the largest 1
    spread = ["a b c g h", "e f h", "d e f g h", "b c d e h"]
    got = run(spread, ["c"] * 4, 1)
    if got != [2]:
        hint = (" You scored each member by its least similar copy; sum over the others."
                if got == [3] else "")
        fail(ex, f"with n=1 the summed similarities of {spread!r} to the other members are "
                 f"largest for document 2: expect [2], got {got}.{hint}")
    got = run(["same words here", "same words here", "something else entirely"], [7, 7, 3], 1)
    if 2 not in got:
        fail(ex, f"document 2 is alone in its cluster (label 3) and stays: a cluster of one keeps "
                 f"its document. Got {got}.")
    if got != [0, 2]:
        fail(ex, "documents 0 and 1 are identical, a tie: keep the smallest index. Labels (7 and "
                 f"3 here) name clusters; they are not document indices. Expect [0, 2], got {got}.")
    got = run([row[0], "a lone page", row[1], row[2]], ["x", "y", "x", "x"], 1)
    if got != [1, 3]:
        fail(ex, "documents 0, 2 and 3 are the three copies above (label 'x'), document 1 is "
                 f"alone: expect [1, 3], got {got}. Return the kept indices sorted, not in "
                 "cluster order.")
    texts, labels, originals = _edited_clusters()
    want = _keep_central(texts, labels)
    got = run(texts, labels, 5)
    if got != want:
        fail(ex, f"on {len(originals)} clusters of a crawl page and three copies each missing a "
                 f"different stretch, expected {want[:6]}..., got {got[:6]}...")
    found = sum(i in got for i in originals)
    firsts = _keep_central(texts, labels, first=True)
    passed(ex, f"the most central copy on hand-worked clusters, ties and singletons; on "
               f"{len(originals)} clusters of a crawl page and three edited copies it keeps the "
               f"original in {found} (keeping the first copy met: in "
               f"{sum(i in firsts for i in originals)}).")


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
    if run(train, ["zebra quick brown fox eats"], 3) != [0]:
        fail(ex, "'zebra quick brown fox eats' shares its middle 3-gram 'quick brown fox' with the "
                 "training text, though neither its first nor its last: test every n-gram. "
                 "Expect [0].")
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


def _drop_repeated(docs: list[str], min_docs: int) -> list[list[str]]:
    """The reference for 2.6: each document's non-blank lines, less those in >= min_docs docs."""
    def key(line: str) -> str:
        return " ".join(line.lower().split())

    counts: dict[str, int] = {}
    for d in docs:
        for k in {key(ln) for ln in d.split("\n") if ln.strip()}:
            counts[k] = counts.get(k, 0) + 1
    return [[ln for ln in d.split("\n") if ln.strip() and counts[key(ln)] < min_docs]
            for d in docs]


def check_2_6(drop_repeated_lines: Callable[..., list[list[str]]]) -> None:
    """drop_repeated_lines(docs, min_docs) -> per document, its non-blank lines that fewer than
    min_docs documents contain (lines compared lower-cased, runs of whitespace as one space)."""
    ex = "2.6"

    def run(docs: list[str], min_docs: int) -> list[list[str]]:
        got = call(ex, drop_repeated_lines, list(docs), min_docs)
        if not isinstance(got, list) or not all(isinstance(d, list) for d in got):
            fail(ex, f"return a list with one list of kept lines per document, got {got!r:.60}"
                     + (": did you forget to return?" if got is None else ""))
        if len(got) != len(docs):
            fail(ex, f"return one list per document ({len(docs)}), got {len(got)}")
        return got

    docs = ["Home\nFirst story.\nFooter", "Home\nSecond story.\nFooter", "Home\nThird story."]
    got = run(docs, 2)
    if got != [["First story."], ["Second story."], ["Third story."]]:
        hint = ""
        if got == [["Home", "First story.", "Footer"], ["Second story."], ["Third story."]]:
            hint = (" You kept the first copy of each line; remove a repeated line from every "
                    "document, the first one too: menus are furniture on every page.")
        elif got and "Footer" in got[0] and "Home" not in got[0]:
            hint = " 'Footer' is in 2 documents, and min_docs=2 means 2 is enough: use >=, not >."
        fail(ex, f"with min_docs=2, 'Home' (3 documents) and 'Footer' (2) go and each story stays: "
                 f"expect [['First story.'], ['Second story.'], ['Third story.']], "
                 f"got {got}.{hint}")
    got = run(docs, 3)
    if got != [["First story.", "Footer"], ["Second story.", "Footer"], ["Third story."]]:
        fail(ex, f"with min_docs=3 only 'Home' (3 documents) goes; 'Footer' (2) stays. Got {got}.")
    twice = ["Chorus\nverse one\nChorus", "verse two\nend"]
    got = run(twice, 2)
    if got != [["Chorus", "verse one", "Chorus"], ["verse two", "end"]]:
        fail(ex, "'Chorus' is twice in the first document but in no other: count the documents "
                 f"that contain a line, not its occurrences. Expect nothing removed, got {got}.")
    spaced = ["Skip  to content\n\nA", "skip to Content\n\nB"]
    got = run(spaced, 2)
    if got != [["A"], ["B"]]:
        fail(ex, "'Skip  to content' and 'skip to Content' are one line once lower-cased with runs "
                 "of whitespace as one space; blank lines are neither counted nor kept. Expect "
                 f"[['A'], ['B']], got {got}.")
    code = ["    return x\nHome", "Home\nelse:"]
    got = run(code, 2)
    if got != [["    return x"], ["else:"]]:
        fail(ex, "return each kept line as written, its indentation included (normalize only "
                 "the key you count by): expect [['    return x'], ['else:']], got "
                 f"{got}.")
    from ..data import html_to_text, normalize_text
    from ..data.real_pages import load_real_pages

    pages = [normalize_text(html_to_text(p.html)) for p in load_real_pages()]
    want = _drop_repeated(pages, 3)
    got = run(pages, 3)
    if got != want:
        bad = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        fail(ex, f"on the real documentation pages with min_docs=3, page {bad} differs: expected "
                 f"{want[bad][:3]}..., got {got[bad][:3]}...")
    before = sum(len(ln.split()) for p in pages for ln in p.split("\n"))
    after = sum(len(ln.split()) for d in got for ln in d)
    passed(ex, f"shared lines removed from every document, counted once per document, compared "
               f"normalized; on {len(pages)} real pages it removes {before - after:,} of "
               f"{before:,} words: the navigation bar on every page, and a few real lines that "
               f"repeat too (See also, Note, version notes, short code lines).")
