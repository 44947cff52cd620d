"""Data: fetch registered files (chapter 1), token shards (chapters 2-3); the crawl and cleaning follow in chapter 2."""
from .registry import REGISTRY, ChecksumError, DataError, DataFile, DataUnavailableError, cache_dir, fetch
from .shards import FORMAT_VERSION, Shard, read_shard, sha256_text, shard_dtype, write_shard

__all__ = [
    "REGISTRY", "ChecksumError", "DataError", "DataFile", "DataUnavailableError", "cache_dir", "fetch", "load_text",
    "FORMAT_VERSION", "Shard", "read_shard", "sha256_text", "shard_dtype", "write_shard",
]


def load_text(name: str = "tinyshakespeare") -> str:
    """The registered text file `name`, decoded as UTF-8. Introduced in chapter 1."""
    text = fetch(name).read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"{name}: the file is empty; a corpus needs at least one character")
    return text
