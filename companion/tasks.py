"""A verifiable task for post-training: reverse a word of Tiny Shakespeare. Chapter 10.

The user writes "reverse: honour"; the right answer is "ruonoh" and then the end of the turn.
A few lines of code check an answer, so reinforcement learning needs no reward model; the words
are split into train and test by word, so no test word is ever trained on.
"""

from __future__ import annotations

import random
import re
from collections import Counter

__all__ = [
    "INSTRUCTION",
    "task_words",
    "split_words",
    "prompt_messages",
    "chat_messages",
    "reward",
    "trivial_baselines",
]

INSTRUCTION = "reverse: "


def task_words(text: str, min_len: int = 3, max_len: int = 7) -> list[str]:
    """The distinct lowercase words of the text with min_len..max_len letters, sorted.

    Example: task_words("The cat sat; the DOG.") -> ['cat', 'sat', 'the']
    """
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    counts = Counter(re.findall(r"[a-z]+", text.lower()))
    words = sorted(w for w in counts if min_len <= len(w) <= max_len)
    if not words:
        raise ValueError(f"the text has no words of {min_len} to {max_len} letters")
    return words


def split_words(words: list[str], n_test: int, seed: int = 0) -> dict[str, list[str]]:
    """A seeded shuffle, then n_test words for "test" and the rest for "train"; disjoint by word.

    Example: split_words(["ab", "cd", "ef"], 1)["test"] -> one of the three
    """
    if len(set(words)) != len(words):
        raise ValueError("words must be distinct, or a test word could also be a training word")
    if not 0 < n_test < len(words):
        raise ValueError(f"n_test must lie in [1, {len(words) - 1}], got {n_test}")
    shuffled = list(words)
    random.Random(seed).shuffle(shuffled)
    return {"test": shuffled[:n_test], "train": shuffled[n_test:]}


def prompt_messages(word: str) -> list[dict[str, str]]:
    """The user's turn that asks for the reversal. Example: prompt_messages("ab")[0]["content"]
    -> 'reverse: ab'"""
    return [{"role": "user", "content": INSTRUCTION + word}]


def chat_messages(word: str) -> list[dict[str, str]]:
    """The prompt and the right answer, as a chat to train on.

    Example: chat_messages("ab")[1] -> {'role': 'assistant', 'content': 'ba'}
    """
    return prompt_messages(word) + [{"role": "assistant", "content": word[::-1]}]


def reward(word: str, response: str, ended: bool = True) -> float:
    """1.0 when the response is the word reversed and the turn ended there, else 0.0.

    An answer that runs on without its end-of-turn token has not answered: a format failure.
    Example: reward("abc", "cba") -> 1.0; reward("abc", "cb") -> 0.0
    """
    return float(ended and response == word[::-1])


def trivial_baselines(test_words: list[str], train_words: list[str]) -> dict[str, float]:
    """Exact match of three answers that need no model: copy the word, always give the training
    set's commonest answer, and guess letters at random (expected, for the word's length).

    Example: trivial_baselines(["aba", "abc"], ["xy"])["copy the prompt"] -> 0.5
    """
    n = len(test_words)
    commonest = Counter(w[::-1] for w in train_words).most_common(1)[0][0]
    return {
        "copy the prompt": sum(w == w[::-1] for w in test_words) / n,
        "commonest answer": sum(w[::-1] == commonest for w in test_words) / n,
        "random letters": sum(26.0 ** -len(w) for w in test_words) / n,
    }
