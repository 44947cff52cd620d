"""Tokenizers: text <-> integer ids. CharTokenizer is introduced in chapter 1, BPETokenizer in 3.

Modules: `base` (the interface, CharTokenizer), `bpe_train` (split patterns, pair counts, merge,
the merge loop), `bpe` (BPETokenizer), `tools` (the measurements and views chapter 3 shows).
"""
from .base import CharTokenizer, Tokenizer
from .bpe import BPETokenizer
from .bpe_train import (
    CL100K_PATTERN, ENDOFTEXT, GPT2_PATTERN, bytes_to_unicode, get_stats, learn_merges, merge,
    recover_merges,
)

__all__ = [
    "Tokenizer", "CharTokenizer", "BPETokenizer", "GPT2_PATTERN", "CL100K_PATTERN", "ENDOFTEXT",
    "get_stats", "merge", "learn_merges", "recover_merges", "bytes_to_unicode",
]
