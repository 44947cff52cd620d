"""What chapter 3 measures and shows about a tokenizer: merge steps, side-by-side pieces,
bits per byte, and real human translations to count tokens per language on."""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from .bpe import BPETokenizer

__all__ = [
    "truncate", "tokens_after_merges", "token_pieces", "compare_tokenizers", "bits_per_byte",
    "sphinx_catalog", "sphinx_languages",
]


def truncate(tokenizer: BPETokenizer, n_merges: int) -> BPETokenizer:
    """The tokenizer with only its first `n_merges` merges. Example: (bpe, 0).encode("a") -> [97]"""
    if not 0 <= n_merges <= len(tokenizer.merges):
        raise ValueError(f"n_merges={n_merges} must lie in [0, {len(tokenizer.merges)}]")
    first = {p: i for p, i in tokenizer.merges.items() if i < 256 + n_merges}
    return BPETokenizer(first, pattern=tokenizer.pattern, byte_ids=tokenizer.byte_ids)


def token_pieces(encode: Callable[[str], list[int]], decode_one: Callable[[int], bytes],
                 text: str) -> tuple[list[int], list[str]]:
    """(ids, the text each id stands for). Example: (bpe.encode, bpe.token_bytes, "hi") -> ..

    A piece that ends inside a multi-byte character shows its bytes as U+FFFD, as decode would.
    """
    ids = encode(text)
    return ids, [decode_one(i).decode("utf-8", errors="replace") for i in ids]


def tokens_after_merges(tokenizer: BPETokenizer, text: str, n_merges: int) -> list[str]:
    """Pieces of `text` after the first `n_merges` merges. Example: (bpe, "to", 0) -> ["t", "o"]"""
    small = truncate(tokenizer, n_merges)
    return token_pieces(small.encode_ordinary, small.token_bytes, text)[1]


def compare_tokenizers(text: str, tokenizers: Mapping[str, object]) -> dict[str, list[str]]:
    """Pieces of `text` under each named tokenizer (ours or tiktoken's). Example: {"gpt2": [..]}"""
    out = {}
    for name, tok in tokenizers.items():
        # tiktoken's Encoding and our BPETokenizer both take allowed_special; byte lookups differ
        one = getattr(tok, "decode_single_token_bytes", None) or tok.token_bytes
        out[name] = token_pieces(lambda s: tok.encode(s, allowed_special="all"), one, text)[1]
    return out


def bits_per_byte(nats_per_unit: float, n_units: int, n_bytes: int) -> float:
    """Total nats over `n_units` tokens (or chars), spread over the text's UTF-8 bytes, in bits.

    Example: bits_per_byte(math.log(2), 100, 100) -> 1.0. A lower number is a better model,
    whatever its tokenizer, because every model is charged for the same bytes.
    """
    if n_bytes <= 0 or n_units < 0:
        raise ValueError(f"need n_bytes > 0 and n_units >= 0, got n_bytes={n_bytes}, "
                         f"n_units={n_units}")
    return nats_per_unit * n_units / (n_bytes * math.log(2))


# Placeholders are English-looking code, not the translator's language: drop them before counting.
_PLACEHOLDER = re.compile(r"%\(\w+\)[sdr]|%[sdr]|\{[^}]*\}|`[^`]*`|<[^>]*>")


def _sphinx_locale() -> Path:
    try:
        import sphinx
    except ImportError:  # Colab and minimal installs: the book's environment ships Sphinx
        raise ValueError("sphinx is not installed, so its message catalogs are not there; "
                         "pip install sphinx (jupyter-book brings it)") from None
    return Path(sphinx.__file__).parent / "locale"


def sphinx_languages() -> list[str]:
    """Locales whose Sphinx message catalog is installed. Example: [..., 'de', 'fr', 'ja', ...]"""
    return sorted(p.parent.parent.name for p in _sphinx_locale().glob("*/LC_MESSAGES/sphinx.po"))


def sphinx_catalog(lang: str) -> list[tuple[str, str]]:
    """(English message, human translation) pairs from Sphinx's catalog, placeholders removed.

    Example: sphinx_catalog("fr")[0] -> ('Cannot find source directory ( )', 'Impossible ...')
    Fuzzy (unreviewed) and empty translations are left out.
    """
    path = _sphinx_locale() / lang / "LC_MESSAGES" / "sphinx.po"
    if not path.is_file():
        have = ", ".join(sphinx_languages())
        raise ValueError(f"no Sphinx catalog for {lang!r}; installed: {have}")
    from babel.messages.pofile import read_po  # Sphinx depends on Babel

    with open(path, "rb") as f:
        catalog = read_po(f)
    pairs = []
    for m in catalog:
        if isinstance(m.id, str) and m.id and isinstance(m.string, str) and m.string \
                and not m.fuzzy:
            en, tr = (" ".join(_PLACEHOLDER.sub(" ", s).split()) for s in (m.id, m.string))
            if en and tr:
                pairs.append((en, tr))
    return pairs
