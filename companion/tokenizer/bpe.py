"""Byte-level BPE (chapter 3): split text with a regex, then merge byte pairs in learned order."""
from __future__ import annotations

import base64
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import regex

from ..data import fetch
from .base import Tokenizer
from .bpe_train import (
    ENDOFTEXT, GPT2_PATTERN, Pair, bytes_to_unicode, learn_merges, merge, recover_merges,
    special_regex,
)

__all__ = ["BPETokenizer"]

FORMAT_VERSION = 1
_CACHE_MAX = 1 << 18  # chunks remembered by encode; bounds memory on huge, diverse corpora
Allowed = Literal["all", "none", "none_raise"] | set[str]


class BPETokenizer(Tokenizer):
    """Byte-level BPE: split text with a regex, then merge byte pairs in the order learned.

    Example: BPETokenizer.train("aaabdaaabac", 259).encode("aaabdaaabac") -> [258, 100, 258, 97, 99]
    """

    def __init__(
        self,
        merges: dict[Pair, int],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        byte_ids: Sequence[int] | None = None,
    ):
        self.merges = dict(merges)  # (id, id) -> new id; new ids are 256, 257, ... in merge order
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        # GPT-2 numbers its 256 byte tokens in its own order, so byte b is token byte_ids[b].
        self.byte_ids = list(range(256)) if byte_ids is None else [int(i) for i in byte_ids]
        if sorted(self.byte_ids) != list(range(256)):
            raise ValueError("byte_ids must be a permutation of 0..255")
        self.vocab: dict[int, bytes] = {idx: bytes([b]) for b, idx in enumerate(self.byte_ids)}
        for rank, ((a, b), idx) in enumerate(sorted(self.merges.items(), key=lambda kv: kv[1])):
            if idx != 256 + rank:
                raise ValueError(
                    f"merge {rank} makes id {idx}; merge ids must run 256, 257, ... without gaps"
                )
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(
                    f"merge {rank} ({a}, {b}) -> {idx} uses an id not made by an earlier merge"
                )
            self.vocab[idx] = self.vocab[a] + self.vocab[b]
        n_base = len(self.vocab)
        for s, idx in self.special_tokens.items():
            ok = isinstance(s, str) and s and isinstance(idx, int)
            if not ok or idx < n_base or idx in self.vocab:
                raise ValueError(
                    f"special token {s!r} -> {idx!r}: ids must be distinct ints >= {n_base}"
                )
            self.vocab[idx] = s.encode("utf-8")
        self.vocab_size = max(self.vocab) + 1
        self._split = regex.compile(pattern)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: dict[str, int] | list[str] | None = None,
        pattern: str = GPT2_PATTERN,
        verbose: bool = False,
    ) -> "BPETokenizer":
        """Learn merges until `vocab_size` ids (256 bytes, merges, specials) are used, or none left.

        Example: BPETokenizer.train("aaabdaaabac", 259).merges -> {(97, 97): 256, ...}
        """
        specials = special_tokens or {}
        n_special = len(specials)
        if vocab_size < 256 + n_special:
            raise ValueError(
                f"vocab_size={vocab_size} is below 256 byte tokens + {n_special} special tokens "
                f"= {256 + n_special}"
            )
        if not text:
            raise ValueError("cannot train BPE on empty text; it needs at least one character")
        num_merges = vocab_size - 256 - n_special
        ids = specials.values() if isinstance(specials, dict) else []
        if bad := [i for i in ids if not 256 + num_merges <= i < vocab_size]:
            raise ValueError(
                f"special token ids {bad} must lie in [{256 + num_merges}, {vocab_size}) "
                "after the merges"
            )
        # Specials never take part in merges: cut them out first, then count the unique chunks.
        split = regex.compile(pattern)
        sp = special_regex(frozenset(specials))
        parts = sp.split(text)[::2] if sp else [text]
        counts = Counter(chunk for part in parts for chunk in split.findall(part))
        chunks = {c.encode("utf-8"): n for c, n in counts.items()}

        vocab = {i: bytes([i]) for i in range(256)}

        def show(pair: Pair, idx: int, *state) -> None:
            vocab[idx] = vocab[pair[0]] + vocab[pair[1]]
            print(f"merge {idx - 255}/{num_merges}: {pair} -> {idx} {vocab[idx]!r}")

        merges = learn_merges(chunks, num_merges, show if verbose else None)
        if isinstance(specials, list):  # a list gets the ids right after the merges
            specials = {s: 256 + len(merges) + i for i, s in enumerate(specials)}
        return cls(merges, specials, pattern)

    @classmethod
    def from_tiktoken(cls, name: str = "gpt2") -> "BPETokenizer":
        """GPT-2's merges and ids, from the mirror. Example: .encode("hello") -> [31373]"""
        if name == "gpt2":
            # vocab.bpe spells each byte as a printable stand-in; encoder.json gives token ids.
            encoder = json.loads(fetch("gpt2-encoder.json").read_text(encoding="utf-8"))
            # skip the first line, "#version: 0.2"
            lines = fetch("gpt2-vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
            byte_ids = [encoder[bytes_to_unicode()[b]] for b in range(256)]
            pairs = (line.split(" ") for line in lines if line)
            merges = {(encoder[a], encoder[b]): encoder[a + b] for a, b in pairs}
        elif name == "r50k_base":
            lines = fetch("r50k_base.tiktoken").read_text().splitlines()
            rows = map(str.split, filter(None, lines))
            ranks = {base64.b64decode(tok): int(rank) for tok, rank in rows}
            byte_ids = [ranks[bytes([b])] for b in range(256)]
            merges = recover_merges(ranks)
        else:
            raise ValueError(f"unknown encoding {name!r}; expected 'gpt2' or 'r50k_base'")
        return cls(merges, {ENDOFTEXT: 50256}, GPT2_PATTERN, byte_ids)

    # -- encoding and decoding -----------------------------------------------------------------

    def _encode_chunk(self, data: bytes) -> list[int]:
        """Merge one chunk's bytes, lowest merge id (earliest learned) first."""
        ids = [self.byte_ids[b] for b in data]
        rank = self.merges.get
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: rank(p, 1 << 62))
            if pair not in self.merges:
                break  # nothing left to merge
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def _encode_chunks(self, chunks: Iterable[str]) -> Iterator[list[int]]:
        """Each chunk's ids. Text repeats its words, so a dict of seen chunks skips most merges."""
        cache = self._cache
        for chunk in chunks:
            if (piece := cache.get(chunk)) is None:
                piece = self._encode_chunk(chunk.encode("utf-8"))
                if len(cache) < _CACHE_MAX:
                    cache[chunk] = piece
            yield piece

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text`, special-token strings as plain text. Example: "hi" -> [5303] (GPT-2)."""
        ids: list[int] = []
        for piece in self._encode_chunks(self._split.findall(text)):
            ids.extend(piece)
        return ids

    def _allowed(self, allowed_special: Allowed) -> set[str]:
        """The specials to encode as one id, checked against the tokenizer's own."""
        if allowed_special in ("none", "none_raise"):
            return set()
        if allowed_special == "all":
            return set(self.special_tokens)
        if isinstance(allowed_special, (set, frozenset)):
            if unknown := sorted(set(allowed_special) - set(self.special_tokens)):
                raise ValueError(
                    f"allowed_special names unknown special tokens {unknown}; "
                    f"known: {sorted(self.special_tokens)}"
                )
            return set(allowed_special)
        raise ValueError(
            f"allowed_special must be 'all', 'none', 'none_raise' or a set, got {allowed_special!r}"
        )

    def _refuse(self, allowed_special: Allowed, allowed: set[str]) -> "regex.Pattern | None":
        """The specials that must raise: all but the allowed, unless "none" means plain text."""
        if allowed_special == "none":
            return None
        return special_regex(frozenset(self.special_tokens) - allowed)

    @staticmethod
    def _check(refuse: "regex.Pattern | None", text: str) -> None:
        if refuse is not None and (m := refuse.search(text)):
            raise ValueError(
                f"text contains the special token {m.group()!r} at position {m.start()}, which is "
                f"not allowed; pass allowed_special={{{m.group()!r}}} or 'all' to encode it as one "
                "id, or 'none' for plain text"
            )

    def encode(self, text: str, allowed_special: Allowed = "none_raise") -> list[int]:
        """Encode like tiktoken: allowed specials become one id; others raise, unless "none".

        Example: encode("hi<|endoftext|>", allowed_special="all") -> [5303, 50256] (GPT-2)
        """
        allowed = self._allowed(allowed_special)
        self._check(self._refuse(allowed_special, allowed), text)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, part in enumerate(special_regex(frozenset(allowed)).split(text)):
            # split with a group alternates text, special, text, ...
            ids.extend([self.special_tokens[part]] if i % 2 else self.encode_ordinary(part))
        return ids

    def encode_iterable(
        self, texts: Iterable[str], allowed_special: Allowed = "none_raise"
    ) -> Iterator[int]:
        """Yield the ids of "".join(texts) lazily. Example: (["hel", "lo"]) -> 31373 (GPT-2)

        Memory stays flat however long the stream: only the last, possibly unfinished pre-token
        chunk of each piece (and any tail that may begin a special token) waits for the next piece.
        """
        allowed = self._allowed(allowed_special)
        refuse = self._refuse(allowed_special, allowed)
        split = special_regex(frozenset(allowed)).split if allowed else None
        longest = max(map(len, self.special_tokens), default=0)
        starts = {s[0] for s in self.special_tokens}
        carry = ""
        for n, piece in enumerate(texts):
            if not isinstance(piece, str):
                kind = type(piece).__name__
                raise ValueError(f"encode_iterable needs strings; item {n} is {kind}")
            buf = carry + piece
            hold = 0  # a tail that may start a special token cut by the piece boundary waits
            if not starts.isdisjoint(buf[-longest:]):
                hold = max((k for s in self.special_tokens for k in range(1, len(s))
                            if buf.endswith(s[:k])), default=0)
            head, tail = buf[: len(buf) - hold], buf[len(buf) - hold :]
            self._check(refuse, head)
            parts = split(head) if split else [head]
            out: list[int] = []  # one piece's ids, yielded together: a yield per chunk is slower
            for i, part in enumerate(parts[:-1]):
                if i % 2:
                    out.append(self.special_tokens[part])
                else:
                    out.extend(self.encode_ordinary(part))
            # The last chunk may still grow ("hel" + "lo"), so it waits for the next piece.
            last = parts[-1]
            chunks = self._split.findall(last)
            if sum(map(len, chunks)) != len(last):  # a pattern that skips characters: find the cut
                matches = list(self._split.finditer(last))
                cut = matches[-1].start() if matches else len(last)
                chunks = [m.group() for m in matches[:-1]] + [last[cut:]]
            for ids in self._encode_chunks(chunks[:-1]):
                out.extend(ids)
            yield from out
            carry = (chunks[-1] if chunks else "") + tail
        if carry:
            yield from self.encode(carry, allowed_special)

    def token_bytes(self, idx: int) -> bytes:
        """The bytes token `idx` stands for. Example: token_bytes(256) -> b"aa" (toy training)."""
        if (piece := self.vocab.get(int(idx))) is None:
            raise ValueError(f"id {int(idx)} is outside the vocabulary of {self.vocab_size} ids")
        return piece

    def decode(self, ids: Sequence[int] | Iterable[int]) -> str:
        # A token can end mid-character (emoji span tokens): bad UTF-8 becomes U+FFFD, not an error.
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    # -- saving and loading --------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write merges (in rank order), specials, pattern and byte order as JSON, atomically."""
        path = Path(path)
        state = {
            "format": "companion-bpe",
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "byte_ids": self.byte_ids,
            # the i-th merge makes id 256 + i
            "merges": [list(p) for p, _ in sorted(self.merges.items(), key=lambda kv: kv[1])],
            "special_tokens": self.special_tokens,
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state, f)
            os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one
        finally:
            Path(tmp).unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        """Read a file written by `save`; a damaged or foreign file raises ValueError naming it."""
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{path}: not a valid tokenizer file (corrupt or truncated JSON: {err})"
            ) from None
        if not isinstance(state, dict) or state.get("format") != "companion-bpe":
            raise ValueError(
                f"{path}: not a companion BPE tokenizer file (no 'format': 'companion-bpe')"
            )
        if state.get("version") != FORMAT_VERSION:
            version = state.get("version")
            raise ValueError(
                f"{path}: format version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        try:
            merges = {(int(a), int(b)): 256 + i for i, (a, b) in enumerate(state["merges"])}
            return cls(merges, state["special_tokens"], state["pattern"], state["byte_ids"])
        except (KeyError, TypeError, ValueError, AttributeError, regex.error) as err:
            kind = type(err).__name__
            raise ValueError(f"{path}: invalid tokenizer file ({kind}: {err})") from None

    def __repr__(self) -> str:
        n_merges, n_special = len(self.merges), len(self.special_tokens)
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={n_merges}, "
                f"specials={n_special})")
