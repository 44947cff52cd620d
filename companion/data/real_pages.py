"""Real web pages for scoring chapter 2's filters: text that no one on this project wrote.
Introduced in chapter 2.

44 pages of the Python 3.11 documentation, as Debian's python3-doc ships them, with real navigation,
sidebars, footers and code (PSF License Version 2; see REAL_PAGES_SOURCES.md). Each page carries a
quality label by a stated rule and the text of a reference extractor, trafilatura; rebuild with
tools/make_real_pages.py.
"""
from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["RealPage", "load_real_pages", "real_pages_meta", "word_overlap", "speeches",
           "toxicity_reference"]

PATH = Path(__file__).with_name("real_pages.json.gz")
TOXICITY_PATH = Path(__file__).with_name("toxicity_reference.json.gz")


@dataclass(frozen=True)
class RealPage:
    """One real page: its name, HTML, quality label ("good"/"bad") and trafilatura's text."""

    name: str
    html: str
    label: str
    reference: str


@lru_cache(maxsize=1)
def _load() -> dict:
    with gzip.open(PATH, "rt", encoding="utf-8") as f:
        return json.load(f)


def load_real_pages() -> list[RealPage]:
    """The shipped pages. Example: load_real_pages()[0].name -> "library/archiving.html" """
    return [RealPage(p["name"], p["html"], p["label"], p["trafilatura"])
            for p in _load()["pages"]]


def real_pages_meta() -> dict:
    """Source, licence, reference extractor and labelling rule of the shipped pages."""
    return dict(_load()["meta"])


_WORDS = re.compile(r"\w+")


def word_overlap(ours: str, reference: str) -> dict[str, float]:
    """Bag-of-words precision, recall and F1 of an extraction against a reference text.

    Words are lower-cased \\w+ runs and counted with multiplicity, as extraction benchmarks do.
    Example: word_overlap("Home the cat", "the cat sat") -> precision 2/3, recall 2/3
    """
    a, b = Counter(_WORDS.findall(ours.lower())), Counter(_WORDS.findall(reference.lower()))
    common = sum((a & b).values())
    p = common / max(sum(a.values()), 1)
    r = common / max(sum(b.values()), 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def speeches(text: str, min_words: int = 8) -> list[str]:
    """The speeches of Tiny Shakespeare (blank-line separated blocks) of at least min_words words.

    Example: speeches("A:\nHi there.\n\nB:\nThe cat sat on the mat today, I think.")[0][:2] -> "B:"
    """
    return [b.strip() for b in text.split("\n\n") if len(b.split()) >= min_words]


def toxicity_reference() -> tuple[list[str], list[float], dict]:
    """(SHA-256 prefixes of the speeches, P(offensive) from the reference classifier, meta).

    Recorded by tools/make_toxicity_reference.py with alt-profanity-check, a linear SVM trained on
    human-labelled offensive and clean comments, so notebooks need no scikit-learn.
    """
    with gzip.open(TOXICITY_PATH, "rt", encoding="utf-8") as f:
        d = json.load(f)
    return d["sha256_12"], d["p_offensive"], d["meta"]
