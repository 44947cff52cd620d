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
