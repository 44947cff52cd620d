"""Duplicate removal: exact (a hash of normalized text) and near (MinHash signatures + LSH bands,
from scratch), and union-find clusters of candidate pairs.
Introduced in chapter 2.

The MinHash follows datasketch's default "affine32" scheme bit for bit (SHA-1 -> 32 bits, a
MurmurHash3 finalizer, then h -> a*h + b mod 2**32 with datasketch's seeded a and b), so the tests
can check that our signatures and LSH candidate pairs are exactly datasketch's. The permutations
run on the whole corpus at once in numpy, which is what makes it fast.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np

__all__ = [
    "normalize_for_hash",
    "exact_dedup",
    "shingles",
    "jaccard",
    "minhash_permutations",
    "minhash_signatures",
    "estimate_jaccard",
    "candidate_probability",
    "lsh_params",
    "lsh_candidate_pairs",
    "union_find_clusters",
    "near_dedup",
    "line_doc_counts",
    "line_dedup",
]

_MAX32 = np.uint32(0xFFFFFFFF)  # the value of an empty signature: no shingle has been seen


def _check_docs(docs: object, name: str = "docs") -> None:
    """TypeError unless `docs` is a list or tuple of str; ValueError if it is empty."""
    if not isinstance(docs, (list, tuple)):
        raise TypeError(f"{name} must be a list of str, got {type(docs).__name__}")
    if not docs:
        raise ValueError(f"{name} is empty: pass at least one document")
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(d).__name__}")


def _check_params(threshold: float, num_perm: int) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if not 0 < threshold < 1:
        raise ValueError(
            f"threshold is a Jaccard similarity and must lie strictly in (0, 1), got {threshold}"
        )
    if isinstance(num_perm, bool) or not isinstance(num_perm, int):
        raise TypeError(f"num_perm must be an int, got {type(num_perm).__name__}")
    if num_perm < 2:
        raise ValueError(
            f"num_perm must be at least 2 (LSH needs two bands of one row), got {num_perm}"
        )


# ---- Exact duplicates --------------------------------------------------------------------------
def normalize_for_hash(text: str) -> str:
    """Fold the differences that do not make a new document: Unicode form, case, runs of whitespace.

    Example: normalize_for_hash("To  BE,\\nor not") -> "to be, or not"
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_dedup(docs: Sequence[str]) -> list[int]:
    """Indices of the documents to keep: the first of each group with equal normalized text.

    Example: exact_dedup(["a b", "A  b", "c"]) -> [0, 2]. Introduced in chapter 2.
    """
    _check_docs(docs)
    seen: set[bytes] = set()
    keep = []
    for i, d in enumerate(docs):
        key = hashlib.sha256(
            normalize_for_hash(d).encode("utf-8")
        ).digest()  # 32 bytes, not the whole text
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


# ---- Repeated lines ----------------------------------------------------------------------------
def _line_key(line: str) -> bytes:
    """A 16-byte key of a normalized line: the counts table holds digests, not whole lines."""
    return hashlib.blake2b(normalize_for_hash(line).encode("utf-8"), digest_size=16).digest()


def line_doc_counts(docs: Sequence[str]) -> Counter:
    """How many documents contain each non-blank line, keyed by the line's normalized digest.

    A line repeated inside one document counts once: we want lines shared *across* pages.
    Example: line_doc_counts(["Home\nA", "home\nB"])[_line_key("Home")] -> 2
    """
    _check_docs(docs)
    counts: Counter = Counter()
    for d in docs:
        counts.update({_line_key(ln) for ln in d.splitlines() if ln.strip()})
    return counts


def line_dedup(docs: Sequence[str], min_docs: int = 2) -> list[str]:
    """Each document without its lines that occur in at least `min_docs` documents.

    Lines are compared after normalize_for_hash. Blank lines stay, runs of them collapse to one,
    so paragraphs keep their breaks. min_docs=2 is CS336's exact line dedup (drop every line seen
    twice); a larger threshold spares quotations and keeps only boilerplate in its sights.
    Example: line_dedup(["Home\nA", "Home\nB"]) -> ["A", "B"]. Introduced in chapter 2.
    """
    if isinstance(min_docs, bool) or not isinstance(min_docs, int):
        raise TypeError(f"min_docs must be an int, got {type(min_docs).__name__}")
    if min_docs < 2:
        raise ValueError(f"min_docs must be at least 2 (a line is in at least 1 document), "
                         f"got {min_docs}")
    counts = line_doc_counts(docs)
    out = []
    for d in docs:
        kept = [ln for ln in d.splitlines() if not ln.strip() or counts[_line_key(ln)] < min_docs]
        text = "\n".join(kept)
        out.append(re.sub(r"\n\s*\n(\s*\n)*", "\n\n", text).strip())
    return out


# ---- Shingles and Jaccard ----------------------------------------------------------------------
_TOKEN = re.compile(r"\w+")


def shingles(text: str, n: int = 5) -> set[str]:
    """The set of word n-grams of lower-cased text, punctuation dropped; a text shorter than n is
    one shingle.

    Example: shingles("To be, or not to be", 3) -> {"to be or", "be or not", "or not to", "not to "
                                                                                          "be"}
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    words = _TOKEN.findall(text.lower())
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: Iterable, b: Iterable) -> float:
    """|A ∩ B| / |A ∪ B|, and 1.0 for two empty sets.

    Example: jaccard({1, 2, 3}, {2, 3, 4}) -> 0.5
    """
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a or b else 1.0


# ---- MinHash -----------------------------------------------------------------------------------
def minhash_permutations(num_perm: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of num_perm maps h -> a*h + b mod 2**32, drawn as datasketch does (odd a)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer: similar inputs get unrelated hashes (wraps mod 2**32)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def minhash_signatures(
    sets: Sequence[Iterable[str]], num_perm: int = 128, seed: int = 1, chunk_rows: int = 1 << 15
) -> np.ndarray:
    """A (N, num_perm) uint32 array: row i is the MinHash signature of sets[i].

    Each shingle is hashed once for the whole corpus; then every permutation of every shingle is
    one numpy expression, and np.minimum.reduceat takes the minimum per document.
    Example: minhash_signatures([{"a b"}, {"a b"}], 4) -> two equal rows.
    """
    cache: dict[str, int] = {}
    ids, lengths = [], []
    for s in sets:
        row = [cache.setdefault(x, len(cache)) for x in s]
        ids.extend(row)
        lengths.append(len(row))
    # SHA-1's first 4 bytes, little-endian: datasketch's sha1_hash32.
    digests = b"".join(hashlib.sha1(x.encode("utf-8")).digest()[:4] for x in cache)
    hashes = _fmix32(np.frombuffer(digests, dtype="<u4").astype(np.uint32))[
        np.asarray(ids, dtype=np.int64)
    ]
    a, b = minhash_permutations(num_perm, seed)
    out = np.full((len(lengths), num_perm), _MAX32, dtype=np.uint32)
    ends = np.cumsum(lengths)
    starts = ends - np.asarray(lengths)
    doc = 0
    while doc < len(
        lengths
    ):  # chunks of whole documents, at most ~chunk_rows shingles each, bound memory
        last = max(doc + 1, int(np.searchsorted(ends, starts[doc] + chunk_rows, side="right")))
        lo, hi = starts[doc], ends[last - 1]
        if hi > lo:
            vals = hashes[lo:hi, None] * a[None, :] + b[None, :]  # (S, P) uint32, wraps mod 2**32
            nonempty = np.flatnonzero(np.asarray(lengths[doc:last]) > 0)
            out[doc + nonempty] = np.minimum.reduceat(vals, starts[doc + nonempty] - lo, axis=0)
        doc = last
    return out


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The share of positions where two signatures agree: an unbiased estimate of Jaccard."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures differ in length: {sig_a.shape} vs {sig_b.shape}")
    return float(np.mean(sig_a == sig_b))


# ---- LSH ---------------------------------------------------------------------------------------
def candidate_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """The S-curve: P(two sets of Jaccard s share at least one band) = 1 - (1 - s**rows)**bands."""
    return 1 - (1 - np.asarray(s, dtype=float) ** rows) ** bands


def lsh_params(threshold: float, num_perm: int, recall: float = 0.995) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm: the most rows (fewest chance candidates) that
    still make pairs at `threshold` candidates with probability >= `recall`.
    Example: lsh_params(0.8, 128) -> (21, 6)
    """
    _check_params(threshold, num_perm)
    if not 0 < recall < 1:
        raise ValueError(f"recall must lie in (0, 1), got {recall}")
    best = (num_perm, 1)
    for rows in range(1, num_perm // 2 + 1):
        bands = num_perm // rows
        if bands >= 2 and candidate_probability(threshold, bands, rows) >= recall:
            best = (bands, rows)
    return best


def lsh_candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j, whose signatures agree on every row of at least one band."""
    n, p = signatures.shape
    if bands < 1 or rows < 1 or bands * rows > p:
        raise ValueError(
            f"bands*rows = {bands}*{rows} = {bands * rows} must lie in [1, num_perm={p}]"
        )
    pairs: set[tuple[int, int]] = set()
    for k in range(bands):
        band = np.ascontiguousarray(signatures[:, k * rows : (k + 1) * rows])
        keys = band.view(
            np.dtype((np.void, band.dtype.itemsize * rows))
        ).ravel()  # one bucket key per row
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        if counts.max() < 2:
            continue
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.cumsum(counts)[:-1])
        for g in groups:
            if len(g) > 1:
                pairs.update(combinations(g.tolist(), 2))  # g is sorted, so i < j
    return pairs


def union_find_clusters(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """The cluster of each of n items joined by `pairs`, named by its smallest member.

    Union-find with path halving; each union hangs the larger root under the smaller, so the label
    of a cluster is its first document.
    Example: union_find_clusters(4, [(2, 3), (1, 2)]) -> [0, 1, 1, 1]
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving: the next find is shorter
            x = parent[x]
        return x

    for i, j in pairs:
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair ({i}, {j}) names an item outside 0..{n - 1}")
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]


def near_dedup(
    docs: Sequence[str], threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1
) -> list[int]:
    """Indices to keep: a document goes if an earlier kept one has Jaccard >= threshold on word
    n-grams.

    LSH proposes candidate pairs from MinHash bands; each candidate is then verified with its exact
    Jaccard, so LSH's chance collisions never remove a document. Example: near_dedup(["a b c d e f",
    "a b c d e f g"], threshold=0.5, ngram=2) -> [0]. Introduced in chapter 2.
    """
    _check_docs(docs)
    _check_params(threshold, num_perm)
    sets = [shingles(d, ngram) for d in docs]
    sig = minhash_signatures(sets, num_perm, seed)
    bands, rows = lsh_params(threshold, num_perm)
    earlier = defaultdict(list)  # j -> earlier documents similar enough to j
    for i, j in lsh_candidate_pairs(sig, bands, rows):
        if jaccard(sets[i], sets[j]) >= threshold - 1e-12:
            earlier[j].append(i)
    alive = np.zeros(len(docs), dtype=bool)
    for j in range(len(docs)):
        alive[j] = not any(alive[i] for i in earlier[j])
    return np.flatnonzero(alive).tolist()
