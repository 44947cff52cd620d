"""Tests for companion.tokenizer.BPETokenizer and its helpers (chapter 3)."""
import json
import re

import pytest
import regex
import tiktoken
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.data import DataUnavailableError, fetch, load_text
from companion.tokenizer import GPT2_PATTERN, BPETokenizer, get_stats, learn_merges, merge

EOT = "<|endoftext|>"

# Edge inputs for parity with tiktoken: each one has tripped some BPE implementation.
TORTURE = {
    "empty": "",
    "single_space": " ",
    "single_char": "a",
    "emoji_zwj_family": "family: 👨‍👩‍👧‍👦 and 👩🏽‍💻 coding",
    "emoji_skin_tones": "👍👍🏻👍🏼👍🏽👍🏾👍🏿 ✋🏿",
    "flags": "🇺🇳🇯🇵 🏴‍☠️",
    "cjk": "你好，世界！日本語のテキスト、한국어 텍스트",
    "arabic_hebrew": "مرحبا بالعالم ١٢٣ שלום עולם",
    "combining_marks": "e\u0301 n\u0303 Z\u0351\u0334\u0327a\u0300l\u0352g\u0308o",
    "devanagari_thai": "नमस्ते दुनिया สวัสดีชาวโลก",
    "whitespace_runs": "a   b\t\t\tc\n\n\nd \n \t e    \r\n\r\n  ",
    "trailing_spaces": "end with spaces     ",
    "only_newlines": "\n\n\n\n",
    "unicode_spaces": "a\u00a0b\u2003c\u200bd\u2028e\u3000f",
    "contractions": "I'm sure they'll say it's what we've done; YOU'RE 'twas O'Neil's",
    "numbers": "3.14159 1,000,000 42nd 2024-01-01 0x1F ½ ² ⅷ",
    "code_python": "def f(x):\n\tif x >= 10:\n\t\treturn {'a': [1, 2]}  # comment\n    return None\n",
    "code_c": "int main(void){printf(\"%d\\n\", a->b[i++]); return 0;}",
    "endoftext_embedded": f"one{EOT}two {EOT} three\n{EOT}",
    "endoftext_alone": EOT,
    "near_special": "<|endoftext| <|endoftext|x <|startoftext|>",
    "control_chars": "a\x00b\x07c\x1bd\x7f",
    "math_symbols": "∑∫√∞ ≤≥≠ ∀x∈ℝ",
    "astral_plane": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀𓀁 \U0010fffd",
    "mixed": "Hello world! 123 héllo wörld 🌍\n\tTabs and  double  spaces.",
}


@pytest.fixture(scope="module")
def tiny():
    try:
        fetch("tinyshakespeare", offline=True)  # never the network: the mirror or the cache only
    except DataUnavailableError as err:
        pytest.skip(f"Tiny Shakespeare unavailable (set COMPANION_DATA_DIR to the mirror): {err}")
    return load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def gpt2():
    try:
        return BPETokenizer.from_tiktoken("gpt2")
    except DataUnavailableError as err:
        pytest.skip(f"GPT-2 vocab files unavailable (set COMPANION_DATA_DIR to the mirror): {err}")


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2):
    return tiktoken.get_encoding("gpt2")  # reads $TIKTOKEN_CACHE_DIR; the network guard blocks downloads


_SMALL = None


def _small_tokenizer() -> BPETokenizer:
    """A cheap tokenizer for property tests: 300 ids learned from 20k characters, plus <|endoftext|>."""
    global _SMALL
    if _SMALL is None:
        text = load_text("tinyshakespeare")[:20_000]
        _SMALL = BPETokenizer.train(text, 300, special_tokens=[EOT])
    return _SMALL


# -- helpers ------------------------------------------------------------------------------------


def test_get_stats_counts_overlapping_adjacent_pairs():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_stats([7, 7, 7]) == {(7, 7): 2}
    assert get_stats([5], {(1, 2): 1}, weight=3) == {(1, 2): 1}
    assert get_stats([1, 2], {(1, 2): 1}, weight=3) == {(1, 2): 4}


def test_merge_replaces_non_overlapping_pairs_left_to_right():
    assert merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert merge([7, 7, 7], (7, 7), 9) == [9, 7]
    assert merge([], (1, 2), 4) == []


# -- training -----------------------------------------------------------------------------------


def test_hand_worked_wikipedia_aaabdaaabac():
    """Wikipedia's BPE example, with ties going to the pair seen first (as in minbpe).

    "aaabdaaabac" is one chunk (all letters), bytes a=97 b=98 c=99 d=100.
    1. Pair counts: (a,a)=4 (overlapping), (a,b)=2, (b,d)=(d,a)=(b,a)=(a,c)=1. Merge (97,97) -> 256 ("Z"):
       Z a b d Z a b a c.
    2. Counts: (Z,a)=2, (a,b)=2, the rest 1. Tie at 2: (Z,a) occurs first, at position 0, so (256,97) -> 257
       ("Y" = "aaa"): Y b d Y b a c. (Wikipedia breaks this tie the other way and merges "ab" first.)
    3. Counts: (Y,b)=2, the rest 1. Merge (257,98) -> 258 ("X" = "aaab"): X d X a c = [258, 100, 258, 97, 99].
    """
    tok = BPETokenizer.train("aaabdaaabac", 259)
    assert tok.merges == {(97, 97): 256, (256, 97): 257, (257, 98): 258}
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"
    assert [tok.token_bytes(i) for i in (256, 257, 258)] == [b"aa", b"aaa", b"aaab"]
    assert tok.vocab_size == 259


def _full_recount(words, freqs) -> dict:
    counts: dict = {}
    for w, f in zip(words, freqs):
        get_stats(w, counts, f)
    return counts


def test_incremental_counts_equal_full_recount_after_every_merge(tiny):
    text = tiny[:5000] + " aaaa aaaaa abab ababab"  # runs of one byte exercise overlapping pairs
    chunks = {}
    for chunk in re.findall(r" ?\w+| ?[^\w\s]+|\s+", text):
        chunks[chunk.encode()] = chunks.get(chunk.encode(), 0) + 1
    seen = []

    def check(pair, idx, words, freqs, stats):
        assert stats == _full_recount(words, freqs), f"after merge {idx}"
        seen.append(idx)

    merges = learn_merges(chunks, 150, on_merge=check)
    assert seen == list(range(256, 256 + len(merges))) and len(merges) == 150


@settings(max_examples=60, deadline=None, database=None)
@given(words=st.lists(st.text(alphabet="ab c", min_size=1, max_size=12), min_size=1, max_size=8))
def test_incremental_counts_equal_full_recount_on_random_chunks(words):
    chunks = {w.encode(): n + 1 for n, w in enumerate(words)}

    def check(pair, idx, words, freqs, stats):
        assert stats == _full_recount(words, freqs)

    learn_merges(chunks, 20, on_merge=check)


def _minbpe_merges(text: str, num_merges: int) -> dict:
    """The textbook loop, as minbpe's RegexTokenizer runs it: recount every chunk of the text before each merge."""
    chunks = [list(c.encode()) for c in regex.findall(GPT2_PATTERN, text)]
    merges = {}
    for idx in range(256, 256 + num_merges):
        stats: dict = {}
        for c in chunks:
            get_stats(c, stats)
        if not stats:
            break
        pair = max(stats, key=stats.get)  # the first of the most frequent, in order of first occurrence
        merges[pair] = idx
        chunks = [merge(c, pair, idx) for c in chunks]
    return merges


def test_incremental_training_learns_the_same_merges_as_minbpe_recount(tiny):
    text = tiny[:20_000]
    assert BPETokenizer.train(text, 256 + 150).merges == _minbpe_merges(text, 150)


@settings(max_examples=60, deadline=None, database=None)
@given(text=st.text(alphabet="ab c\n", min_size=1, max_size=60))
def test_incremental_training_learns_the_same_merges_as_minbpe_on_random_text(text):
    # A tiny alphabet forces many ties, so this checks the tie-break as much as the counts.
    assert BPETokenizer.train(text, 256 + 30).merges == _minbpe_merges(text, 30)


def test_training_stops_early_when_no_pairs_are_left():
    tok = BPETokenizer.train("ab", 1000, special_tokens=[EOT])
    assert tok.merges == {(97, 98): 256}
    assert tok.special_tokens == {EOT: 257}
    assert tok.vocab_size == 258


def test_special_tokens_in_training_text_are_never_merged():
    tok = BPETokenizer.train(f"x{EOT}x{EOT}x{EOT}", 400, special_tokens={EOT: 399})
    assert all(b"<|" not in tok.token_bytes(i) for i in tok.merges.values())
    assert tok.encode(f"x{EOT}", allowed_special="all") == [120, 399]
    assert tok.vocab_size == 400


def test_round_trip_over_tinyshakespeare_with_a_trained_tokenizer(tiny):
    tok = BPETokenizer.train(tiny, 1024)
    assert tok.vocab_size == 1024 and len(tok.merges) == 768
    ids = tok.encode(tiny)
    assert max(ids) < 1024
    assert len(ids) < len(tiny.encode("utf-8")) / 2  # 768 merges at least halve the byte count
    assert tok.decode(ids) == tiny


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text())
def test_round_trip_any_unicode(text):
    tok = _small_tokenizer()
    ids = tok.encode(text, allowed_special="all")
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


# -- parity with tiktoken -----------------------------------------------------------------------


def test_gpt2_merges_match_tiktoken_on_all_of_tinyshakespeare(tiny, gpt2, tiktoken_gpt2):
    ids = gpt2.encode(tiny, allowed_special="all")
    assert ids == tiktoken_gpt2.encode(tiny, allowed_special="all")
    assert gpt2.decode(ids) == tiny


@pytest.mark.parametrize("name", sorted(TORTURE))
def test_gpt2_merges_match_tiktoken_on_edge_input(name, gpt2, tiktoken_gpt2):
    text = TORTURE[name]
    ids = gpt2.encode(text, allowed_special="all")
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids) == text


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text())
def test_gpt2_merges_match_tiktoken_on_any_unicode(text, gpt2, tiktoken_gpt2):
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")


def test_gpt2_ids_and_vocab_match_tiktoken(gpt2, tiktoken_gpt2):
    assert gpt2.vocab_size == tiktoken_gpt2.n_vocab == 50257
    assert gpt2.special_tokens == {EOT: 50256}
    assert gpt2.encode("hello") == [31373]
    for idx in (0, 1, 100, 255, 256, 1000, 31373, 50255, 50256):
        assert gpt2.token_bytes(idx) == tiktoken_gpt2.decode_single_token_bytes(idx)


def test_r50k_base_recovered_from_ranks_equals_gpt2(gpt2):
    r50k = BPETokenizer.from_tiktoken("r50k_base")
    assert r50k.merges == gpt2.merges
    assert r50k.byte_ids == gpt2.byte_ids
    assert r50k.special_tokens == gpt2.special_tokens


# -- special tokens -----------------------------------------------------------------------------


SPECIAL_TEXT = f"Hello{EOT} world <|endoftext|>!"


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ("all", {"allowed_special": "all"}),
        ({EOT}, {"allowed_special": {EOT}}),
        ("none", {"disallowed_special": ()}),
    ],
    ids=["all", "set", "none-as-text"],
)
def test_special_tokens_encode_like_tiktoken(ours, theirs, gpt2, tiktoken_gpt2):
    assert gpt2.encode(SPECIAL_TEXT, allowed_special=ours) == tiktoken_gpt2.encode(SPECIAL_TEXT, **theirs)


def test_allowed_special_becomes_one_id_and_none_splits_it_as_text(gpt2):
    assert gpt2.encode(EOT, allowed_special="all") == [50256]
    assert 50256 not in gpt2.encode(EOT, allowed_special="none")
    assert gpt2.decode(gpt2.encode(EOT, allowed_special="none")) == EOT


def test_disallowed_special_raises_naming_the_token_like_tiktoken(gpt2, tiktoken_gpt2):
    with pytest.raises(ValueError):
        tiktoken_gpt2.encode(SPECIAL_TEXT)
    with pytest.raises(ValueError, match=re.escape("'<|endoftext|>' at position 5")):
        gpt2.encode(SPECIAL_TEXT)
    with pytest.raises(ValueError, match=re.escape("<|endoftext|>")):
        gpt2.encode(SPECIAL_TEXT, allowed_special=set())


def test_set_allows_only_the_listed_specials():
    tok = BPETokenizer.train("abcabc", 260, special_tokens=["<a>", "<b>"])
    assert tok.special_tokens == {"<a>": 258, "<b>": 259}
    assert tok.encode("x<a>", allowed_special={"<a>"}) == [120, 258]
    with pytest.raises(ValueError, match=re.escape("'<b>'")):
        tok.encode("x<a><b>", allowed_special={"<a>"})
    with pytest.raises(ValueError, match=re.escape("unknown special tokens ['<c>']")):
        tok.encode("x", allowed_special={"<c>"})


# -- save and load ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["trained", "gpt2"])
def test_save_load_round_trip_gives_identical_encodings(which, tmp_path, gpt2):
    tok = _small_tokenizer() if which == "trained" else gpt2
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
    assert loaded.vocab == tok.vocab and loaded.vocab_size == tok.vocab_size
    for text in TORTURE.values():
        assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # the temp file was renamed away


def _saved(tmp_path):
    path = tmp_path / "tok.json"
    _small_tokenizer().save(path)
    return path


def test_truncated_file_raises_value_error_naming_it(tmp_path):
    path = _saved(tmp_path)
    path.write_text(path.read_text()[:100])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*corrupt or truncated"):
        BPETokenizer.load(path)


def test_binary_garbage_raises_value_error(tmp_path):
    path = tmp_path / "tok.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        BPETokenizer.load(path)


def test_wrong_version_raises_value_error_naming_both_versions(tmp_path):
    path = _saved(tmp_path)
    state = json.loads(path.read_text())
    state["version"] = 99
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=re.escape(f"{path}: format version 99 is not supported (expected 1)")):
        BPETokenizer.load(path)


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.pop("merges"),
        lambda s: s["merges"].append([5000, 1]),  # an id no earlier merge made
        lambda s: s["merges"].__setitem__(0, "ab"),
        lambda s: s.__setitem__("special_tokens", {EOT: 3}),  # collides with a byte id
        lambda s: s.__setitem__("byte_ids", [0] * 256),
        lambda s: s.__setitem__("pattern", "(unclosed"),
        lambda s: s.__setitem__("format", "something-else"),
    ],
    ids=["no-merges", "unknown-id", "bad-pair", "special-collides", "bad-byte-ids", "bad-pattern", "foreign"],
)
def test_damaged_contents_raise_value_error_naming_the_file(damage, tmp_path):
    path = _saved(tmp_path)
    state = json.loads(path.read_text())
    damage(state)
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        BPETokenizer.load(path)


# -- bad input ----------------------------------------------------------------------------------


def test_vocab_size_below_bytes_plus_specials_raises_naming_the_numbers():
    with pytest.raises(ValueError, match=re.escape("vocab_size=257 is below 256 byte tokens + 2 special tokens = 258")):
        BPETokenizer.train("hello", 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(ValueError, match="vocab_size=100"):
        BPETokenizer.train("hello", 100)


def test_special_ids_inside_the_merge_range_raise():
    with pytest.raises(ValueError, match=re.escape("must lie in [299, 300)")):
        BPETokenizer.train("hello", 300, special_tokens={EOT: 260})


def test_empty_training_text_raises():
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer.train("", 300)


@pytest.mark.parametrize("bad_id", [-1, 300, 10**9])
def test_decode_id_outside_vocabulary_raises_naming_it(bad_id):
    tok = _small_tokenizer()
    with pytest.raises(ValueError, match=f"id {bad_id} is outside the vocabulary of 300 ids"):
        tok.decode([72, bad_id])


def test_decode_accepts_tensor_ids_and_replaces_split_utf8():
    tok = _small_tokenizer()
    assert tok.decode(torch.tensor(tok.encode("hello"))) == "hello"
    assert tok.decode([0xE2, 0x82]) == "\ufffd"  # the first two bytes of "€" are not valid UTF-8 alone


def test_empty_string_encodes_and_decodes_to_empty(gpt2):
    assert gpt2.encode("") == [] and gpt2.decode([]) == ""


# --- encode_iterable: lazy, and the same ids as one encode of the joined text ------------------

STREAM_TEXT = "Hello  world!\n\n  12345 don't  \n\tnaïve café 生きる 🙂<|endoftext|>next doc   \n"


@settings(max_examples=150, deadline=None, database=None)
@given(cuts=st.lists(st.integers(0, len(STREAM_TEXT)), max_size=8))
def test_encode_iterable_equals_encode_of_the_joined_text_for_any_cuts(cuts, gpt2):
    bounds = [0, *sorted(cuts), len(STREAM_TEXT)]
    pieces = [STREAM_TEXT[a:b] for a, b in zip(bounds, bounds[1:])]
    want = gpt2.encode(STREAM_TEXT, allowed_special="all")
    assert list(gpt2.encode_iterable(pieces, allowed_special="all")) == want
    plain = gpt2.encode(STREAM_TEXT, allowed_special="none")
    assert list(gpt2.encode_iterable(pieces, allowed_special="none")) == plain


@settings(max_examples=150, deadline=None, database=None)
@given(pieces=st.lists(st.text(alphabet="ab 1\n'<|endoftext>", max_size=12), max_size=10))
def test_encode_iterable_equals_encode_on_random_pieces(pieces, gpt2):
    assert list(gpt2.encode_iterable(pieces, "none")) == gpt2.encode("".join(pieces), "none")


def test_encode_iterable_is_lazy_and_yields_before_the_stream_ends(gpt2):
    def lines():
        yield "First line of a long stream.\n"
        raise RuntimeError("the encoder asked for the second piece too early")

    stream = gpt2.encode_iterable(lines())
    first = [next(stream) for _ in range(3)]  # must come from the first piece alone
    assert first == gpt2.encode("First line of")


def test_encode_iterable_raises_on_a_disallowed_special_split_across_pieces(gpt2):
    with pytest.raises(ValueError, match="endoftext"):
        list(gpt2.encode_iterable(["end<|endof", "text|>start"]))


def test_encode_iterable_refuses_non_strings_naming_the_item(gpt2):
    with pytest.raises(ValueError, match="item 1 is bytes"):
        list(gpt2.encode_iterable(["ok", b"bytes"]))


def test_encode_iterable_with_a_trained_tokenizer_and_specials_matches_encode():
    tok = BPETokenizer.train("low lower lowest<|endoftext|>newer newest", 270, [EOT])
    text = "lowest newer<|endoftext|>low"
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    assert list(tok.encode_iterable(pieces, "all")) == tok.encode(text, "all")
    assert tok.encode(text, "all").count(tok.special_tokens[EOT]) == 1
