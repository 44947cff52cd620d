"""Tests for companion.tokenizer.CharTokenizer."""
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.data import DataUnavailableError, fetch, load_text
from companion.tokenizer import CharTokenizer

_TINY = None
_TINY_TOK = None


def _tiny_text():
    global _TINY
    if _TINY is None:
        try:
            fetch("tinyshakespeare", offline=True)  # never the network: the mirror or the cache only
        except DataUnavailableError as err:
            pytest.skip(f"Tiny Shakespeare unavailable (set COMPANION_DATA_DIR to the mirror): {err}")
        _TINY = load_text("tinyshakespeare")
    return _TINY


def _tiny_tokenizer():
    global _TINY_TOK
    if _TINY_TOK is None:
        _TINY_TOK = CharTokenizer.from_text(_tiny_text())
    return _TINY_TOK


@pytest.fixture(scope="module")
def tiny():
    return _tiny_text()


@pytest.fixture(scope="module")
def tiny_tok(tiny):
    return _tiny_tokenizer()


def test_round_trip_over_tinyshakespeare(tiny, tiny_tok):
    ids = tiny_tok.encode(tiny)
    assert len(ids) == len(tiny)
    assert tiny_tok.decode(ids) == tiny


def test_tinyshakespeare_vocab_is_65_sorted_distinct_chars(tiny, tiny_tok):
    assert tiny_tok.vocab_size == 65
    assert tiny_tok.itos == sorted(set(tiny))
    assert all(tiny_tok.stoi[c] == i for i, c in enumerate(tiny_tok.itos))


def test_hand_worked_hello_encodes_hole():
    """The vocabulary of "hello" is its distinct characters in sorted order:
    e -> 0, h -> 1, l -> 2, o -> 3. So "hole" = h, o, l, e -> [1, 3, 2, 0].
    """
    tok = CharTokenizer.from_text("hello")
    assert tok.itos == ["e", "h", "l", "o"]
    assert tok.vocab_size == 4
    assert tok.encode("hole") == [1, 3, 2, 0]
    assert tok.decode([1, 3, 2, 0]) == "hole"


def test_decode_accepts_tensor_ids():
    tok = CharTokenizer.from_text("hello")
    assert tok.decode(torch.tensor([1, 0, 2, 2, 3])) == "hello"


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.data())
def test_round_trip_any_text_over_the_alphabet(data):
    tok = _tiny_tokenizer()
    text = data.draw(st.text(alphabet=tok.itos, max_size=200))
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(min_size=1, max_size=50))
def test_round_trip_any_unicode_with_its_own_vocab(text):
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode(text)) == text


def test_unknown_character_raises_value_error_naming_char_and_position():
    tok = CharTokenizer.from_text("hello")
    with pytest.raises(ValueError, match=re.escape("'z' at position 2")):
        tok.encode("hez")


def test_unknown_character_reports_first_offending_position():
    tok = CharTokenizer.from_text("hello")
    with pytest.raises(ValueError) as info:
        tok.encode("hh!o?")
    assert "'!'" in str(info.value)
    assert "position 2" in str(info.value)


@pytest.mark.parametrize("bad_id", [-1, 4, 100])
def test_out_of_range_id_raises_value_error(bad_id):
    tok = CharTokenizer.from_text("hello")
    with pytest.raises(ValueError, match=f"id {bad_id} is outside"):
        tok.decode([0, bad_id])


def test_empty_text_raises_value_error():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")


def test_empty_string_encodes_and_decodes_to_empty():
    tok = CharTokenizer.from_text("hello")
    assert tok.encode("") == []
    assert tok.decode([]) == ""


# --- companion.tokenizer.tools: what chapter 3 measures and shows --------------------------

import math

import tiktoken

from companion.tokenizer import BPETokenizer
from companion.tokenizer.tools import (
    bits_per_byte, compare_tokenizers, sphinx_catalog, sphinx_languages, tokens_after_merges,
    truncate,
)


def test_tokens_after_merges_grow_from_bytes_to_the_full_encoding():
    """aaabdaaabac: 0 merges -> 11 bytes; 1 merge (aa) -> 9 pieces; all 3 -> 5 pieces, as trained."""
    tok = BPETokenizer.train("aaabdaaabac", 259, pattern=r".+")
    assert tokens_after_merges(tok, "aaabdaaabac", 0) == list("aaabdaaabac")
    assert tokens_after_merges(tok, "aaabdaaabac", 1) == ["aa", "a", "b", "d", "aa", "a", "b", "a", "c"]
    assert tokens_after_merges(tok, "aaabdaaabac", 3) == ["aaab", "d", "aaab", "a", "c"]
    assert truncate(tok, 3).encode("aaabdaaabac") == tok.encode("aaabdaaabac")


def test_truncate_rejects_more_merges_than_learned():
    tok = BPETokenizer.train("aaabdaaabac", 259, pattern=r".+")
    with pytest.raises(ValueError, match=r"n_merges=4 must lie in \[0, 3\]"):
        truncate(tok, 4)


def test_compare_tokenizers_gives_the_same_pieces_for_ours_and_tiktoken_gpt2():
    ours = BPETokenizer.from_tiktoken("gpt2")
    text = "naïve café 生きる 12345 <|endoftext|>"
    got = compare_tokenizers(text, {"ours": ours, "gpt2": tiktoken.get_encoding("gpt2"),
                                    "cl100k": tiktoken.get_encoding("cl100k_base")})
    assert got["ours"] == got["gpt2"]
    assert "<|endoftext|>" in got["gpt2"] and "\ufffd" in "".join(got["gpt2"])  # split 生き bytes
    assert got["cl100k"] != got["gpt2"]


def test_bits_per_byte_hand_worked_and_tokenizer_free():
    """ln 2 nats per unit over as many units as bytes is 1 bit per byte; halving the units halves it."""
    assert bits_per_byte(math.log(2), 100, 100) == pytest.approx(1.0)
    assert bits_per_byte(math.log(2), 50, 100) == pytest.approx(0.5)
    # The same total nats give the same bits per byte, however they are cut into tokens.
    assert bits_per_byte(2.0, 30, 120) == pytest.approx(bits_per_byte(1.0, 60, 120))
    with pytest.raises(ValueError, match="n_bytes=0"):
        bits_per_byte(1.0, 10, 0)


def test_sphinx_catalogs_hold_real_translations_without_placeholders():
    assert {"de", "fr", "ja", "ru", "zh_CN"} <= set(sphinx_languages())
    fr = sphinx_catalog("fr")
    assert len(fr) > 300
    assert all("%s" not in tr and "%(" not in tr for _, tr in fr)
    assert any("é" in tr for _, tr in fr)  # French, not English left untranslated
    with pytest.raises(ValueError, match="no Sphinx catalog for 'xx'"):
        sphinx_catalog("xx")


def test_merge_stepper_shows_the_pieces_for_the_slider_position():
    from companion.widgets import merge_stepper

    tok = BPETokenizer.train("aaabdaaabac", 259, pattern=r".+")
    box = merge_stepper(tok, "aaabdaaabac", 1)
    slider = box.children[0]
    assert (slider.min, slider.max, slider.value) == (0, 3, 1)
    slider.value = 3  # the widget recomputes with the same pure function the page calls
    assert tokens_after_merges(tok, "aaabdaaabac", slider.value) == ["aaab", "d", "aaab", "a", "c"]


def test_tokenizer_playground_builds_for_ours_and_tiktoken():
    from companion.widgets import tokenizer_playground

    box = tokenizer_playground({"ours": BPETokenizer.from_tiktoken("gpt2"),
                                "gpt2": tiktoken.get_encoding("gpt2")}, "Hello world")
    assert box.children[0].value == "Hello world"
