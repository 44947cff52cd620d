"""The tokenizer interface and the character tokenizer. Introduced in chapter 1."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["Tokenizer", "CharTokenizer"]


class Tokenizer:
    """Base class: a tokenizer maps text to ids and back, over a vocabulary of `vocab_size` ids."""

    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One id per distinct character, in sorted order.

    Example: CharTokenizer.from_text("hello").encode("hole") -> [1, 3, 2, 0]
    """

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars))
        if not chars:
            raise ValueError("CharTokenizer needs at least one character; the text was empty")
        if bad := [c for c in chars if len(c) != 1]:
            raise ValueError(
                f"CharTokenizer vocabulary items must be single characters, got {bad[:3]}"
            )
        self.itos: list[str] = chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Build the vocabulary from every character that occurs in `text`."""
        return cls(text)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(
                f"character {text[pos]!r} at position {pos} is not in the vocabulary "
                f"of {self.vocab_size} characters"
            ) from None

    def decode(self, ids: Sequence[int] | Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if bad := [i for i in ids if not 0 <= i < self.vocab_size]:
            raise ValueError(f"id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return "".join(self.itos[i] for i in ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
