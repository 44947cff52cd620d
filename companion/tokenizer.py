"""Tokenizers: text <-> integer ids. CharTokenizer is introduced in chapter 1, BPETokenizer in chapter 3."""
from __future__ import annotations

import base64
import heapq
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import regex  # the `re` module lacks \p{L}; tiktoken depends on `regex`, so it is already installed

from .data import fetch

__all__ = [
    "Tokenizer", "CharTokenizer", "BPETokenizer", "GPT2_PATTERN", "get_stats", "merge", "learn_merges",
    "recover_merges", "bytes_to_unicode",
]


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
            raise ValueError(f"CharTokenizer vocabulary items must be single characters, got {bad[:3]}")
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


# ---------------------------------------------------------------------------------------------
# Byte-level BPE (chapter 3), in the spirit of minbpe: helpers, the merge loop, then the class.

# GPT-2's split, as tiktoken writes it: equivalent to the original
# r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
# but the possessive quantifiers (++) stop the regex engine from backtracking, which is faster.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
FORMAT_VERSION = 1
_CACHE_MAX = 1 << 18  # chunks remembered by encode; bounds memory on huge, diverse corpora

Pair = tuple[int, int]


def get_stats(ids: Sequence[int], counts: dict[Pair, int] | None = None, weight: int = 1) -> dict[Pair, int]:
    """Add `weight` per adjacent pair. Example: get_stats([1, 2, 3, 1, 2]) -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}"""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: Pair, idx: int) -> list[int]:
    """Replace `pair` by `idx`, left to right. Example: merge([1, 2, 3, 1, 2], (1, 2), 4) -> [4, 3, 4]"""
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
    """GPT-2's printable stand-in for each byte, as used in vocab.bpe. Example: bytes_to_unicode()[32] -> 'Ġ'"""
    # Printable bytes stand for themselves; the other 68 are shifted to 256 and up, in byte order.
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(shifted)}}


def learn_merges(
    chunks: dict[bytes, int], num_merges: int, on_merge: Callable[..., None] | None = None
) -> dict[Pair, int]:
    """Learn up to `num_merges` merges from chunk -> count. Example: learn_merges({b"aaab": 1}, 1) -> {(97, 97): 256}

    Chunks are in order of first appearance. Picks the most frequent pair; ties go to the pair seen first.
    After each merge, `on_merge(pair, idx, words, freqs, stats)` sees the live state (for tests and printing).
    Stops early when no pair is left.
    """
    words = [list(chunk) for chunk in chunks]  # each unique chunk as a list of ids, merged in place
    freqs = list(chunks.values())
    stats: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}  # pair -> the chunks that contain it: a merge only touches these
    for i, (w, f) in enumerate(zip(words, freqs)):
        get_stats(w, stats, f)
        for pair in zip(w, w[1:]):
            where.setdefault(pair, set()).add(i)

    def first_seen(p: Pair) -> tuple[int, int]:
        """(chunk, position) of the pair's first occurrence in the text; chunks are in order of first appearance."""
        i = min(where[p])
        return i, next(k for k, q in enumerate(zip(words[i], words[i][1:])) if q == p)

    # Max-heap of (-count, pair); entries whose count has changed since are skipped when popped (lazy deletion).
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
            # Equal counts go to the pair seen first in the text, as in minbpe and a naive recount loop.
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


def _special_regex(specials: Iterable[str]) -> "regex.Pattern | None":
    """One alternation of the specials, longest first so that a longer one wins at the same position."""
    specials = sorted(specials, key=len, reverse=True)
    return regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")") if specials else None


class BPETokenizer(Tokenizer):
    """Byte-level BPE: split text with a regex, then merge byte pairs in the order they were learned.

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
                raise ValueError(f"merge {rank} makes id {idx}; merge ids must run 256, 257, ... without gaps")
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge {rank} ({a}, {b}) -> {idx} uses an id not made by an earlier merge")
            self.vocab[idx] = self.vocab[a] + self.vocab[b]
        n_base = len(self.vocab)
        for s, idx in self.special_tokens.items():
            if not (isinstance(s, str) and s and isinstance(idx, int)) or idx < n_base or idx in self.vocab:
                raise ValueError(f"special token {s!r} -> {idx!r}: ids must be distinct ints >= {n_base}")
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
        """Learn merges until `vocab_size` ids (256 bytes + merges + specials) are used, or no pair is left."""
        specials = special_tokens or {}
        n_special = len(specials)
        if vocab_size < 256 + n_special:
            raise ValueError(
                f"vocab_size={vocab_size} is below 256 byte tokens + {n_special} special tokens = {256 + n_special}"
            )
        if not text:
            raise ValueError("cannot train BPE on empty text; it needs at least one character")
        num_merges = vocab_size - 256 - n_special
        ids = specials.values() if isinstance(specials, dict) else []
        if bad := [i for i in ids if not 256 + num_merges <= i < vocab_size]:
            raise ValueError(f"special token ids {bad} must lie in [{256 + num_merges}, {vocab_size}) after the merges")
        # Specials never take part in merges: cut them out first, then count the unique chunks.
        split = regex.compile(pattern)
        parts = sp.split(text)[::2] if (sp := _special_regex(specials)) else [text]
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
        """GPT-2's merges and ids, read from the mirror. Example: from_tiktoken("gpt2").encode("hello") -> [31373]"""
        if name == "gpt2":
            # vocab.bpe spells each byte as a printable stand-in character; encoder.json gives each token's id.
            encoder = json.loads(fetch("gpt2-encoder.json").read_text(encoding="utf-8"))
            lines = fetch("gpt2-vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # skip "#version: 0.2"
            byte_ids = [encoder[bytes_to_unicode()[b]] for b in range(256)]
            merges = {(encoder[a], encoder[b]): encoder[a + b] for a, b in (line.split(" ") for line in lines if line)}
        elif name == "r50k_base":
            ranks = {
                base64.b64decode(tok): int(rank)
                for tok, rank in (line.split() for line in fetch("r50k_base.tiktoken").read_text().splitlines() if line)
            }
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

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text`, treating special-token strings as plain text. Example: "hi" -> [5303] with GPT-2."""
        ids: list[int] = []
        cache = self._cache
        for chunk in self._split.findall(text):
            if (piece := cache.get(chunk)) is None:
                piece = self._encode_chunk(chunk.encode("utf-8"))
                if len(cache) < _CACHE_MAX:
                    cache[chunk] = piece
            ids.extend(piece)
        return ids

    def encode(
        self, text: str, allowed_special: Literal["all", "none", "none_raise"] | set[str] = "none_raise"
    ) -> list[int]:
        """Encode like tiktoken: allowed specials become one id; any other special in `text` raises, unless "none"."""
        if allowed_special == "none":
            return self.encode_ordinary(text)
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif allowed_special == "none_raise":
            allowed = set()
        elif isinstance(allowed_special, (set, frozenset)):
            if unknown := sorted(set(allowed_special) - set(self.special_tokens)):
                raise ValueError(
                    f"allowed_special names unknown special tokens {unknown}; known: {sorted(self.special_tokens)}"
                )
            allowed = set(allowed_special)
        else:
            raise ValueError(f"allowed_special must be 'all', 'none', 'none_raise' or a set, got {allowed_special!r}")
        if (disallowed := _special_regex(set(self.special_tokens) - allowed)) and (m := disallowed.search(text)):
            raise ValueError(
                f"text contains the special token {m.group()!r} at position {m.start()}, which is not allowed; "
                f"pass allowed_special={{{m.group()!r}}} or 'all' to encode it as one id, or 'none' for plain text"
            )
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, part in enumerate(_special_regex(allowed).split(text)):
            # re.split with a group alternates text, special, text, ...
            ids.extend([self.special_tokens[part]] if i % 2 else self.encode_ordinary(part))
        return ids

    def token_bytes(self, idx: int) -> bytes:
        """The bytes token `idx` stands for. Example: token_bytes(256) -> b"aa" after training on "aaabdaaabac"."""
        if (piece := self.vocab.get(int(idx))) is None:
            raise ValueError(f"id {int(idx)} is outside the vocabulary of {self.vocab_size} ids")
        return piece

    def decode(self, ids: Sequence[int] | Iterable[int]) -> str:
        # A token can end mid-character (emoji span tokens), so bad UTF-8 becomes U+FFFD rather than an error.
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
            "merges": [list(p) for p, _ in sorted(self.merges.items(), key=lambda kv: kv[1])],  # i-th makes 256+i
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
            raise ValueError(f"{path}: not a valid tokenizer file (corrupt or truncated JSON: {err})") from None
        if not isinstance(state, dict) or state.get("format") != "companion-bpe":
            raise ValueError(f"{path}: not a companion BPE tokenizer file (no 'format': 'companion-bpe')")
        if state.get("version") != FORMAT_VERSION:
            version = state.get("version")
            raise ValueError(f"{path}: format version {version!r} is not supported (expected {FORMAT_VERSION})")
        try:
            merges = {(int(a), int(b)): 256 + i for i, (a, b) in enumerate(state["merges"])}
            return cls(merges, state["special_tokens"], state["pattern"], state["byte_ids"])
        except (KeyError, TypeError, ValueError, AttributeError, regex.error) as err:
            raise ValueError(f"{path}: invalid tokenizer file ({type(err).__name__}: {err})") from None

    def __repr__(self) -> str:
        n_merges, n_special = len(self.merges), len(self.special_tokens)
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={n_merges}, specials={n_special})"


def recover_merges(ranks: dict[bytes, int]) -> dict[Pair, int]:
    """Turn tiktoken's token -> rank into merges. Example: {b"a": 0, b"b": 1, b"ab": 256} -> {(0, 1): 256}"""
    merges = {}
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        # Only merges of lower rank existed when this one was learned, so BPE with those stops at two parts.
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            r, i = min((ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
            if r >= rank:
                raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower-ranked merges")
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        merges[ranks[parts[0]], ranks[parts[1]]] = rank
    return merges
