"""Token shards: `NAME.bin` holds raw little-endian token ids; `NAME.json` says how to read them.

The .bin is uint16 when every id fits (vocab_size <= 65,535) and uint32 otherwise; there is
no header, so any language can read it with one call (numpy: np.fromfile(path, "<u2")).
The .json holds the tokenizer's name and vocab size, the dtype, the token count and the
sha256 of the source text. Chapter 2 writes shards; chapter 3 reads them.
Introduced in chapter 2.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT_VERSION", "Shard", "as_token_array", "read_shard", "sha256_text", "shard_dtype",
           "write_shard", "write_text_shard"]

FORMAT_VERSION = 1
# JSON name -> numpy dtype. Always little-endian, whatever the machine's own byte order.
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_UINT16_MAX_VOCAB = 65_535  # the hand-off: uint32 once the vocabulary exceeds 65,535
_META_KEYS = ("format_version", "tokenizer", "vocab_size", "dtype", "num_tokens", "source_sha256")


def sha256_text(text: str) -> str:
    """Hex sha256 of `text` encoded as UTF-8.

    Example: sha256_text("") -> "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shard_dtype(vocab_size: int) -> str:
    """The .bin dtype for a vocabulary: shard_dtype(50_257) -> "uint16", (100_277) -> "uint32"."""
    if not 1 <= vocab_size <= 2**32:
        raise ValueError(f"vocab_size must lie in [1, 2**32], got {vocab_size}")
    return "uint16" if vocab_size <= _UINT16_MAX_VOCAB else "uint32"


def _paths(path: str | Path) -> tuple[Path, Path]:
    """("x", "x.bin" or "x.json") -> (x.bin, x.json); other dots stay in the name ("tiny.gpt2")."""
    path = Path(path)
    if path.suffix in (".bin", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".bin"), path.with_name(path.name + ".json")


def as_token_array(ids: "Iterable[int] | np.ndarray | Shard") -> np.ndarray:
    """Any 1-D integer sequence (list, range, iterator, ndarray, memmap, tensor, Shard) as an array.

    Arrays, memmaps, CPU tensors and shards are viewed, not copied.
    Example: as_token_array([1, 2]) -> array([1, 2])
    """
    if isinstance(ids, Shard):
        ids = ids.tokens
    # A torch.Tensor, recognised without importing torch here.
    if hasattr(ids, "detach") and hasattr(ids, "numpy"):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, Iterator):
        return np.fromiter(ids, dtype=np.int64)
    arr = np.asarray(ids)  # no dtype=int64 here: that would silently truncate 1.5 to 1
    if arr.size == 0:
        arr = arr.astype(np.int64)  # np.asarray([]) is float64
    if arr.ndim != 1:
        raise ValueError(f"token ids must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
    return arr


def _atomic_write(dest: Path, write) -> None:
    """Write via a temp file beside `dest`, fsync, rename: `dest` is old or whole, never partial."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, dest)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def write_shard(
    path: str | Path,
    ids: Iterable[int] | np.ndarray,
    *,
    tokenizer: str,
    vocab_size: int,
    source_sha256: str,
) -> Path:
    """Write ids to PATH.bin and their description to PATH.json; returns the .bin path.

    Example: write_shard("tiny", [5, 7], tokenizer="gpt2", vocab_size=50257,
    source_sha256=sha256_text(text)) writes tiny.bin (4 bytes: 05 00 07 00) and tiny.json.
    Introduced in chapter 2.
    """
    bin_path, json_path = _paths(path)
    dtype = shard_dtype(vocab_size)
    if not isinstance(tokenizer, str) or not tokenizer:
        raise ValueError(f"tokenizer must be a non-empty name such as 'gpt2', got {tokenizer!r}")
    if not (isinstance(source_sha256, str) and re.fullmatch(r"[0-9a-f]{64}", source_sha256)):
        raise ValueError("source_sha256 must be 64 lowercase hex digits (sha256_text), "
                         f"got {source_sha256!r:.70}")
    arr = as_token_array(ids)
    if arr.size == 0:
        raise ValueError(f"{bin_path.name}: a shard needs at least one token, got none")
    # Check the range before the cast: a cast to uint16 would wrap 70,000 to 4,464 without a word.
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"token id {int(arr[i])} at position {i} is outside the vocabulary [0, {vocab_size}) "
            f"of tokenizer {tokenizer!r} ({bad.size} bad ids in all)"
        )
    data = np.ascontiguousarray(arr, dtype=_DTYPES[dtype])
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer,
        "vocab_size": int(vocab_size),
        "dtype": dtype,
        "num_tokens": int(data.size),
        "source_sha256": source_sha256,
    }
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    # The .json is the commit marker, so the order matters: drop the old .json, swap in the new
    # .bin, then the new .json. A crash anywhere leaves the old pair, a .bin with no .json (which
    # read_shard refuses), or the new pair; never a .bin described by another .bin's .json.
    json_path.unlink(missing_ok=True)
    _atomic_write(bin_path, lambda f: f.write(data.tobytes()))
    _atomic_write(json_path, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode("utf-8")))
    return bin_path


@dataclass(frozen=True)
class Shard:
    """A shard on disk: `tokens` is a read-only memmap of its ids, `meta` its JSON.

    Introduced in chapter 3.
    """

    path: Path
    tokens: np.memmap = field(repr=False)
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.tokens)


def _read_meta(json_path: Path) -> dict[str, Any]:
    """The parsed, checked .json of a shard; ValueError says what is wrong with it."""
    if not json_path.is_file():
        raise ValueError(
            f"{json_path} is missing: a shard is complete only once its .json is written (last), "
            "so the .bin beside it may be half-written. Write the shard again."
        )
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{json_path} is not valid JSON ({err}); write the shard again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{json_path} must hold a JSON object, got {type(meta).__name__}")
    if missing := [k for k in _META_KEYS if k not in meta]:
        raise ValueError(f"{json_path} lacks the field(s) {', '.join(missing)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{json_path}: format_version {meta['format_version']!r} is unknown; "
            f"this code reads {FORMAT_VERSION}"
        )
    if meta["dtype"] not in _DTYPES:
        raise ValueError(f"{json_path}: dtype {meta['dtype']!r} is unknown; "
                         f"expected one of {', '.join(_DTYPES)}")
    for key in ("vocab_size", "num_tokens"):
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 1:
            raise ValueError(f"{json_path}: {key} must be a positive integer, got {meta[key]!r}")
    if shard_dtype(meta["vocab_size"]) != meta["dtype"]:
        raise ValueError(
            f"{json_path}: dtype {meta['dtype']} does not match vocab_size {meta['vocab_size']} "
            f"(expected {shard_dtype(meta['vocab_size'])})"
        )
    return meta


def read_shard(path: str | Path) -> Shard:
    """Open PATH.bin as a read-only memmap after checking it against PATH.json.

    Example: read_shard("tiny").tokens[:2] -> memmap([5, 7], dtype=uint16). Introduced in chapter 3.
    """
    bin_path, json_path = _paths(path)
    meta = _read_meta(json_path)
    dtype = _DTYPES[meta["dtype"]]
    if not bin_path.is_file():
        raise ValueError(f"{bin_path} is missing, though {json_path.name} describes it")
    expected = meta["num_tokens"] * dtype.itemsize
    actual = bin_path.stat().st_size
    if actual != expected:
        raise ValueError(
            f"{bin_path} holds {actual:,} bytes, but {json_path.name} promises "
            f"{meta['num_tokens']:,} {meta['dtype']} tokens = {expected:,} bytes; "
            "the file is truncated or from another shard"
        )
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(meta["num_tokens"],))
    return Shard(path=bin_path, tokens=tokens, meta=meta)


def write_text_shard(
    path: str | Path,
    texts: Iterable[str],
    tokenizer: Any,
    *,
    name: str,
    allowed_special: Any = "none_raise",
    block: int = 1 << 16,
) -> Path:
    """Encode a stream of strings with `tokenizer.encode_iterable` into PATH.bin and PATH.json.

    Memory stays flat: ids go to disk `block` at a time and the source's sha256 is hashed as the
    text goes by. Example: write_text_shard("tiny", open("input.txt"), bpe, name="gpt2").
    Introduced in chapter 3.
    """
    bin_path, json_path = _paths(path)
    vocab_size = int(tokenizer.vocab_size)
    dtype = shard_dtype(vocab_size)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty tokenizer name such as 'gpt2', got {name!r}")
    digest = hashlib.sha256()
    count = 0

    def hashed() -> Iterator[str]:
        for piece in texts:
            if isinstance(piece, str):  # anything else is refused by encode_iterable
                digest.update(piece.encode("utf-8"))
            yield piece

    def write(f) -> None:
        nonlocal count
        ids = tokenizer.encode_iterable(hashed(), allowed_special)
        while (arr := np.fromiter(itertools.islice(ids, block), dtype=np.int64)).size:
            if (bad := np.flatnonzero((arr < 0) | (arr >= vocab_size))).size:
                raise ValueError(f"token id {int(arr[bad[0]])} at position {count + int(bad[0])} "
                                 f"is outside the vocabulary [0, {vocab_size}) of {name!r}")
            f.write(arr.astype(_DTYPES[dtype]).tobytes())
            count += arr.size
        if count == 0:
            raise ValueError(f"{bin_path.name}: a shard needs at least one token, got none")

    bin_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.unlink(missing_ok=True)  # same commit order as write_shard: .json last
    _atomic_write(bin_path, write)
    meta = {"format_version": FORMAT_VERSION, "tokenizer": name, "vocab_size": vocab_size,
            "dtype": dtype, "num_tokens": count, "source_sha256": digest.hexdigest()}
    _atomic_write(json_path, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode("utf-8")))
    return bin_path
