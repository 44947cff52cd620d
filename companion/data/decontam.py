"""Decontamination: GPT-3's n-gram overlap test between a training corpus and an evaluation set.
Introduced in chapter 2.

Brown et al. (2020, appendix C) flag an evaluation example as "dirty" when any of its 13-grams
(lower-cased words, punctuation dropped) also occurs in the training data. We index the training
13-grams by a 64-bit hash, so the index costs 8 bytes per n-gram rather than the n-gram's text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

__all__ = ["word_ngrams", "ngram_index", "overlap_report"]

_WORD = re.compile(r"\w+")


def word_ngrams(text: str, n: int = 13) -> list[tuple[str, ...]]:
    """Every run of n lower-cased words, punctuation dropped; none for a text shorter than n.

    Example: word_ngrams("To be, or not", 2) -> [("to", "be"), ("be", "or"), ("or", "not")]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    words = _WORD.findall(text.lower())
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _key(gram: tuple[str, ...]) -> int:
    return int.from_bytes(
        hashlib.blake2b(" ".join(gram).encode("utf-8"), digest_size=8).digest(), "little"
    )


def ngram_index(docs: Iterable[str], n: int = 13) -> set[int]:
    """The hashed n-grams of a training corpus. Example: len(ngram_index(["a b c"], 2)) -> 2"""
    return {_key(g) for d in docs for g in word_ngrams(d, n)}


def overlap_report(
    train_docs: Sequence[str] | set[int], eval_docs: Sequence[str], n: int = 13
) -> list[dict]:
    """For each evaluation text: its n-grams, how many occur in training, and whether it is dirty.

    `train_docs` may be a prebuilt `ngram_index`. An evaluation text shorter than n words has no
    n-grams and is never dirty (GPT-3 then used shorter n; we keep the rule simple).
    Example: overlap_report(["a b c d"], ["x a b c"], 3)[0] -> {"index": 0, "ngrams": 2,
    "shared": 1, "fraction": 0.5, "dirty": True}
    """
    index = train_docs if isinstance(train_docs, set) else ngram_index(train_docs, n)
    rows = []
    for i, text in enumerate(eval_docs):
        grams = word_ngrams(text, n)
        shared = sum(_key(g) in index for g in grams)
        rows.append(
            {
                "index": i,
                "ngrams": len(grams),
                "shared": shared,
                "fraction": shared / len(grams) if grams else 0.0,
                "dirty": shared > 0,
            }
        )
    return rows
