"""BPE's building blocks: split patterns, pair counts, one merge, the merge loop (chapter 3).

In the spirit of minbpe's base.py: small helpers, each with a worked example.
"""
from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Iterable, Sequence

import regex  # the `re` module lacks \p{L}; tiktoken depends on `regex`, so it is installed

__all__ = [
    "GPT2_PATTERN", "CL100K_PATTERN", "ENDOFTEXT", "Pair", "get_stats", "merge", "bytes_to_unicode",
    "learn_merges", "recover_merges",
]

# GPT-2's split, as tiktoken writes it: equivalent to the original
# r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
# but the possessive quantifiers (++) stop the regex engine from backtracking, which is faster.
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
# GPT-4's split (tiktoken's cl100k_base): contractions in any case, digits in groups of 1-3,
# one non-letter may lead a word, and newlines stay with the whitespace before them.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
ENDOFTEXT = "<|endoftext|>"

Pair = tuple[int, int]


def get_stats(
    ids: Sequence[int], counts: dict[Pair, int] | None = None, weight: int = 1
) -> dict[Pair, int]:
    """Add `weight` per adjacent pair. Example: get_stats([1, 2, 3, 1, 2]) -> {(1, 2): 2, ...}"""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: Pair, idx: int) -> list[int]:
    """Replace `pair` by `idx`, left to right. Example: ([1, 2, 3, 1, 2], (1, 2), 4) -> [4, 3, 4]"""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (vocab.bpe). Example: [32] -> 'Ġ', [10] -> 'Ċ'"""
    # Printable bytes stand for themselves; the other 68 are shifted to 256 and up, in byte order.
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(shifted)}}


def learn_merges(
    chunks: dict[bytes, int], num_merges: int, on_merge: Callable[..., None] | None = None
) -> dict[Pair, int]:
    """Up to `num_merges` merges from chunk -> count. Example: ({b"aab": 1}, 1) -> {(97, 97): 256}

    Chunks are in order of first appearance. Picks the most frequent pair; ties go to the pair seen
    first. After each merge, `on_merge(pair, idx, words, freqs, stats)` sees the live state (for
    tests and printing). Stops early when no pair is left.
    """
    words = [list(chunk) for chunk in chunks]  # each unique chunk as a list of ids, merged in place
    freqs = list(chunks.values())
    stats: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}  # pair -> the chunks holding it: a merge touches only these
    for i, (w, f) in enumerate(zip(words, freqs)):
        get_stats(w, stats, f)
        for pair in zip(w, w[1:]):
            where.setdefault(pair, set()).add(i)

    def first_seen(p: Pair) -> tuple[int, int]:
        """(chunk, position) of the pair's first occurrence; chunks are in order of appearance."""
        i = min(where[p])
        return i, next(k for k, q in enumerate(zip(words[i], words[i][1:])) if q == p)

    # Max-heap of (-count, pair); entries whose count changed since are skipped (lazy deletion).
    heap = [(-c, p) for p, c in stats.items()]
    heapq.heapify(heap)
    merges: dict[Pair, int] = {}
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        if stats.get(pair) != -neg:
            continue  # this count was updated since it was pushed
        ties = {pair}
        while heap and heap[0][0] == neg:
            if stats.get(p := heapq.heappop(heap)[1]) == -neg:
                ties.add(p)
        if len(ties) > 1:
            # Equal counts go to the pair seen first in the text, as in minbpe and a naive loop.
            pair = min(ties, key=first_seen)
            for p in ties - {pair}:
                heapq.heappush(heap, (neg, p))
        idx = 256 + len(merges)
        merges[pair] = idx
        touched: set[Pair] = set()
        for i in list(where[pair]):
            old, f = words[i], freqs[i]
            new = words[i] = merge(old, pair, idx)
            old_pairs, new_pairs = set(zip(old, old[1:])), set(zip(new, new[1:]))
            get_stats(old, stats, -f)  # subtract the chunk's old pairs and add its new ones
            get_stats(new, stats, f)
            for p in old_pairs - new_pairs:
                where[p].discard(i)
            for p in new_pairs - old_pairs:
                where.setdefault(p, set()).add(i)
            touched |= old_pairs | new_pairs
        for p in touched:
            if stats[p] > 0:
                heapq.heappush(heap, (-stats[p], p))
            else:  # gone from the corpus: drop it so stats always equals a full recount
                del stats[p]
                where.pop(p, None)
        if on_merge is not None:
            on_merge(pair, idx, words, freqs, stats)
    return merges


@functools.lru_cache(maxsize=64)  # encode calls it per text: compile each set of specials once
def special_regex(specials: frozenset[str]) -> "regex.Pattern | None":
    """One alternation of the specials, longest first, so a longer one wins at the same position."""
    specials = sorted(specials, key=lambda s: (-len(s), s))
    if not specials:
        return None
    return regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")


def recover_merges(ranks: dict[bytes, int]) -> dict[Pair, int]:
    """tiktoken's token -> rank as merges. Example: {b"a": 0, b"b": 1, b"ab": 2} -> {(0, 1): 2}"""
    merges = {}
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        # Only lower-ranked merges existed when this one was learned, so BPE stops at two parts.
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pairs = enumerate(zip(parts, parts[1:]))
            r, i = min((ranks.get(a + b, rank), i) for i, (a, b) in pairs)
            if r >= rank:
                raise ValueError(
                    f"token {token!r} (rank {rank}) cannot be built from lower-ranked merges"
                )
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        merges[ranks[parts[0]], ranks[parts[1]]] = rank
    return merges
