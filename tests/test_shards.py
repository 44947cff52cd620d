"""Tests for companion.data.shards: the NAME.bin + NAME.json token-shard hand-off between chapters 2 and 3."""
import hashlib
import json
import os

import numpy as np
import pytest

import companion.data.shards as shards_mod
from companion.data.shards import (
    Shard, read_shard, sha256_text, shard_dtype, write_shard, write_text_shard,
)

SHA = sha256_text("some source text")


def _write(path, ids, vocab_size=50_257, tokenizer="gpt2"):
    return write_shard(path, ids, tokenizer=tokenizer, vocab_size=vocab_size, source_sha256=SHA)


# --- round trip and format -----------------------------------------------------------------


@pytest.mark.parametrize(
    "vocab_size, ids, dtype",
    [
        (50_257, [0, 1, 50_256, 31_373, 995], "uint16"),
        (65_535, [0, 65_534], "uint16"),  # the largest vocabulary that stays uint16
        (65_536, [0, 65_535], "uint32"),  # "exceeds 65,535" -> uint32
        (100_277, [0, 65_536, 100_276, 15_339], "uint32"),  # cl100k_base
        (2, [1], "uint16"),  # one token
    ],
)
def test_round_trip_keeps_every_id_and_picks_dtype_by_vocab(tmp_path, vocab_size, ids, dtype):
    bin_path = _write(tmp_path / "s", ids, vocab_size)
    shard = read_shard(tmp_path / "s")
    assert bin_path == tmp_path / "s.bin"
    assert isinstance(shard, Shard)
    assert shard.tokens.tolist() == ids
    assert len(shard) == len(ids)
    assert shard.meta["dtype"] == dtype == shard_dtype(vocab_size)
    assert shard.tokens.dtype == np.dtype("<u2" if dtype == "uint16" else "<u4")
    assert bin_path.stat().st_size == len(ids) * shard.tokens.dtype.itemsize


@pytest.mark.parametrize(
    "ids", [np.array([3, 4], dtype=np.uint8), np.arange(3, 5, dtype=np.int64), range(3, 5), iter([3, 4])]
)
def test_write_accepts_arrays_ranges_and_iterators(tmp_path, ids):
    _write(tmp_path / "s", ids)
    assert read_shard(tmp_path / "s").tokens.tolist() == [3, 4]


def test_write_accepts_a_cpu_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    _write(tmp_path / "s", torch.tensor([7, 8, 9]))
    assert read_shard(tmp_path / "s").tokens.tolist() == [7, 8, 9]


def test_bin_is_raw_little_endian_bytes(tmp_path):
    """258 = 0x0102 -> uint16 LE bytes 02 01; 70,000 = 0x00011170 -> uint32 LE bytes 70 11 01 00."""
    _write(tmp_path / "a", [1, 258], vocab_size=50_257)
    assert (tmp_path / "a.bin").read_bytes() == b"\x01\x00\x02\x01"
    _write(tmp_path / "b", [1, 70_000], vocab_size=100_277)
    assert (tmp_path / "b.bin").read_bytes() == b"\x01\x00\x00\x00\x70\x11\x01\x00"


def test_json_fields_are_exactly_the_hand_off(tmp_path):
    _write(tmp_path / "s", [5, 7, 9], vocab_size=50_257, tokenizer="gpt2")
    meta = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert meta == {
        "format_version": 1,
        "tokenizer": "gpt2",
        "vocab_size": 50_257,
        "dtype": "uint16",
        "num_tokens": 3,
        "source_sha256": SHA,
    }
    assert read_shard(tmp_path / "s").meta == meta


def test_paths_with_bin_json_or_no_suffix_name_the_same_shard(tmp_path):
    """A dotted name such as "tiny.gpt2" keeps its dot: the files are tiny.gpt2.bin and tiny.gpt2.json."""
    _write(tmp_path / "tiny.gpt2.bin", [1, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gpt2.bin", "tiny.gpt2.json"]
    for name in ("tiny.gpt2", "tiny.gpt2.bin", "tiny.gpt2.json"):
        assert read_shard(tmp_path / name).tokens.tolist() == [1, 2]
    assert read_shard(str(tmp_path / "tiny.gpt2")).path == tmp_path / "tiny.gpt2.bin"


def test_tokens_are_a_read_only_memmap(tmp_path):
    _write(tmp_path / "s", [1, 2, 3])
    tokens = read_shard(tmp_path / "s").tokens
    assert isinstance(tokens, np.memmap)
    assert not tokens.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        tokens[0] = 9


def test_sha256_text_hashes_utf8():
    assert sha256_text("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_text("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    assert sha256_text("é") == hashlib.sha256(b"\xc3\xa9").hexdigest()  # UTF-8 bytes c3 a9
    assert sha256_text("é") != sha256_text("e\u0301")  # no Unicode normalisation: bytes decide


# --- refusing bad input --------------------------------------------------------------------


@pytest.mark.parametrize("bad, position", [([1, 50_257, 2], 1), ([-1], 0), ([0, 0, 70_000], 2)])
def test_out_of_range_id_raises_naming_id_and_vocab(tmp_path, bad, position):
    with pytest.raises(ValueError, match=rf"token id {bad[position]} at position {position} .*\[0, 50257\)"):
        _write(tmp_path / "s", bad, vocab_size=50_257)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ids": []}, "at least one token"),
        ({"ids": [[1, 2]]}, "one-dimensional"),
        ({"ids": [1.5]}, "integers"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"tokenizer": ""}, "tokenizer"),
        ({"source_sha256": "the text itself"}, "source_sha256"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs, match):
    args = {"ids": [1], "tokenizer": "gpt2", "vocab_size": 50_257, "source_sha256": SHA, **kwargs}
    ids = args.pop("ids")
    with pytest.raises(ValueError, match=match):
        write_shard(tmp_path / "s", ids, **args)


def test_truncated_bin_raises(tmp_path):
    bin_path = _write(tmp_path / "s", [1, 2, 3])
    bin_path.write_bytes(bin_path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="5 bytes.*3 uint16 tokens = 6 bytes"):
        read_shard(tmp_path / "s")


def test_missing_json_raises(tmp_path):
    _write(tmp_path / "s", [1, 2, 3])
    (tmp_path / "s.json").unlink()
    with pytest.raises(ValueError, match="s.json is missing"):
        read_shard(tmp_path / "s")


def test_missing_bin_raises(tmp_path):
    _write(tmp_path / "s", [1, 2, 3])
    (tmp_path / "s.bin").unlink()
    with pytest.raises(ValueError, match="s.bin is missing"):
        read_shard(tmp_path / "s")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: "{not json", "not valid JSON"),
        (lambda m: "[1, 2]", "JSON object"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "num_tokens"}), "lacks the field.*num_tokens"),
        (lambda m: json.dumps({**m, "dtype": "float32"}), "dtype 'float32' is unknown"),
        (lambda m: json.dumps({**m, "dtype": "uint32"}), "does not match vocab_size"),
        (lambda m: json.dumps({**m, "format_version": 99}), "format_version 99"),
        (lambda m: json.dumps({**m, "num_tokens": "3"}), "num_tokens must be a positive integer"),
    ],
)
def test_corrupt_json_raises(tmp_path, edit, match):
    _write(tmp_path / "s", [1, 2, 3])
    meta = json.loads((tmp_path / "s.json").read_text())
    (tmp_path / "s.json").write_text(edit(meta))
    with pytest.raises(ValueError, match=match):
        read_shard(tmp_path / "s")


# --- atomic writes -------------------------------------------------------------------------


def test_write_leaves_no_temp_files(tmp_path):
    _write(tmp_path / "s", list(range(1000)))
    _write(tmp_path / "s", list(range(10)))  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin", "s.json"]
    assert read_shard(tmp_path / "s").tokens.tolist() == list(range(10))


def test_failed_write_keeps_the_old_shard_and_leaves_no_temp_files(tmp_path):
    _write(tmp_path / "s", [1, 2, 3])
    with pytest.raises(ValueError):
        _write(tmp_path / "s", [1, 99_999])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin", "s.json"]
    assert read_shard(tmp_path / "s").tokens.tolist() == [1, 2, 3]


def test_crash_between_bin_and_json_is_refused_not_misread(tmp_path, monkeypatch):
    """Kill the write after the new .bin lands but before its .json: the old .json must not describe it."""
    _write(tmp_path / "s", [1, 2, 3])
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(shards_mod.os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        _write(tmp_path / "s", [4, 5, 6])  # same length: a stale .json would pass the size check
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin"]
    with pytest.raises(ValueError, match="s.json is missing"):
        read_shard(tmp_path / "s")


# --- a real corpus -------------------------------------------------------------------------


def test_tiny_shakespeare_gpt2_shard_matches_tiktoken(tmp_path):
    """The whole of Tiny Shakespeare under tiktoken's gpt2: 338,025 tokens, read back id for id."""
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        pytest.skip("TIKTOKEN_CACHE_DIR is unset; point it at the mirror's tiktoken-cache/ to test offline")
    tiktoken = pytest.importorskip("tiktoken")
    from companion.data import DataUnavailableError, REGISTRY, fetch, load_text

    try:
        fetch("tinyshakespeare", offline=True)
    except DataUnavailableError as err:
        pytest.skip(f"Tiny Shakespeare unavailable (set COMPANION_DATA_DIR to the mirror): {err}")
    text = load_text("tinyshakespeare")
    enc = tiktoken.get_encoding("gpt2")
    ids = enc.encode_ordinary(text)
    write_shard(tmp_path / "tiny", ids, tokenizer="gpt2", vocab_size=enc.n_vocab, source_sha256=sha256_text(text))
    shard = read_shard(tmp_path / "tiny")
    assert len(shard) == len(ids) == 338_025
    assert np.array_equal(shard.tokens, np.asarray(ids))
    assert shard.meta["source_sha256"] == REGISTRY["tinyshakespeare"].sha256  # text hash == file hash
    assert (tmp_path / "tiny.bin").stat().st_size == 2 * 338_025


# --- write_text_shard: streaming through the tokenizer's encode_iterable --------------------


@pytest.fixture(scope="module")
def gpt2_bpe():
    from companion.tokenizer import BPETokenizer

    return BPETokenizer.from_tiktoken("gpt2")


def test_text_shard_holds_the_same_ids_as_encoding_the_whole_text(tmp_path, gpt2_bpe):
    lines = ["First Citizen:\n", "Before we proceed any further, hear me speak.\n", "\n", "All: 42\n"]
    text = "".join(lines)
    write_text_shard(tmp_path / "t", iter(lines), gpt2_bpe, name="gpt2", block=3)
    shard = read_shard(tmp_path / "t")
    assert shard.tokens.tolist() == gpt2_bpe.encode(text)
    assert shard.meta["source_sha256"] == sha256_text(text)
    assert shard.meta["num_tokens"] == len(gpt2_bpe.encode(text))
    assert shard.meta["tokenizer"] == "gpt2" and shard.meta["vocab_size"] == 50_257


def test_text_shard_calls_encode_iterable(tmp_path, gpt2_bpe):
    calls = []

    class Spy:
        vocab_size = gpt2_bpe.vocab_size

        def encode_iterable(self, texts, allowed_special="none_raise"):
            calls.append(allowed_special)
            return gpt2_bpe.encode_iterable(texts, allowed_special)

    write_text_shard(tmp_path / "s", ["a b<|endoftext|>c"], Spy(), name="gpt2", allowed_special="all")
    assert calls == ["all"]
    assert read_shard(tmp_path / "s").tokens.tolist() == gpt2_bpe.encode("a b<|endoftext|>c", "all")


def test_text_shard_of_empty_text_raises_and_leaves_no_files(tmp_path, gpt2_bpe):
    with pytest.raises(ValueError, match="at least one token"):
        write_text_shard(tmp_path / "e", ["", ""], gpt2_bpe, name="gpt2")
    assert list(tmp_path.iterdir()) == []


def test_text_shard_with_a_disallowed_special_raises_and_leaves_no_files(tmp_path, gpt2_bpe):
    with pytest.raises(ValueError, match="endoftext"):
        write_text_shard(tmp_path / "d", ["x <|endoftext|> y"], gpt2_bpe, name="gpt2")
    assert list(tmp_path.iterdir()) == []
