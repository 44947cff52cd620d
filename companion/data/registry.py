"""Fetch the course's data files: a local mirror first, then a cache, then the canonical URL.

Every file is checked against a pinned sha256 wherever it comes from, so a notebook that
ran offline against the mirror reads byte-for-byte what a Colab user downloads.
Introduced in chapter 1.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["DataFile", "REGISTRY", "DataError", "ChecksumError", "DataUnavailableError", "fetch",
           "cache_dir"]


@dataclass(frozen=True)
class DataFile:
    """One registered file: where it lives upstream and what its bytes must hash to."""

    name: str
    url: str
    sha256: str
    filename: str  # path relative to a mirror or cache folder, e.g. "gpt2/vocab.bpe"
    size: int | None = None


REGISTRY: dict[str, DataFile] = {
    f.name: f
    for f in [
        DataFile(
            "tinyshakespeare",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
            "tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "tinyshakespeare.txt",
            1115394,
        ),
        DataFile(
            "gpt2-vocab.bpe",
            "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            "gpt2/vocab.bpe",
            456318,
        ),
        DataFile(
            "gpt2-encoder.json",
            "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            "gpt2/encoder.json",
            1042301,
        ),
        DataFile(
            "r50k_base.tiktoken",
            "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
            "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
            "tiktoken-encodings/r50k_base.tiktoken",
            835554,
        ),
        DataFile(
            "cl100k_base.tiktoken",
            "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
            "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
            "tiktoken-encodings/cl100k_base.tiktoken",
            1681126,
        ),
    ]
}


class DataError(RuntimeError):
    """Base class for data files that cannot be provided as registered."""


class ChecksumError(DataError):
    """A file's bytes do not hash to the registered sha256."""


class DataUnavailableError(DataError):
    """No verified copy is on disk and the download failed or is not allowed."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """The user cache: $COMPANION_CACHE_DIR, $XDG_CACHE_HOME/llm-course, or ~/.cache/llm-course."""
    if env := os.environ.get("COMPANION_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "llm-course"


def _checksum_error(entry: DataFile, path: Path | str, actual: str, fix: str) -> ChecksumError:
    return ChecksumError(
        f"{entry.name}: {path} has the wrong contents.\n"
        f"  expected sha256 {entry.sha256}\n"
        f"  actual sha256   {actual}\n"
        f"  source URL      {entry.url}\n"
        f"Fix: {fix}"
    )


def _download(entry: DataFile, dest: Path, timeout: float = 60.0) -> None:
    """Download to a temp file beside `dest`, verify, rename: a broken download leaves nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or entry.size
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {entry.name}") as bar:
                while block := resp.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
        actual = sha256_of(tmp)
        if actual != entry.sha256:
            raise _checksum_error(
                entry, entry.url, actual,
                "the server sent different bytes than the course pins; try again later, or put a "
                f"verified copy at $COMPANION_DATA_DIR/{entry.filename}.",
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, *, offline: bool | None = None) -> Path:
    """Return a local, sha256-verified path to the registered data file `name`.

    Looks in $COMPANION_DATA_DIR (a read-only mirror), then the user cache, then downloads
    from the canonical URL into the cache. `offline=True` (or COMPANION_OFFLINE=1) forbids
    the download. Example: fetch("tinyshakespeare") -> Path('.../tinyshakespeare.txt').
    """
    if name not in REGISTRY:
        raise KeyError(f"unknown data file {name!r}; "
                       f"registered names: {', '.join(sorted(REGISTRY))}")
    entry = REGISTRY[name]
    if offline is None:
        offline = os.environ.get("COMPANION_OFFLINE", "") not in ("", "0")

    if mirror := os.environ.get("COMPANION_DATA_DIR"):
        path = Path(mirror).expanduser() / entry.filename
        if path.is_file():
            actual = sha256_of(path)
            if actual != entry.sha256:
                raise _checksum_error(
                    entry, path, actual,
                    f"replace it with a good copy (see {Path(mirror) / 'SHA256SUMS'}), or unset "
                    "COMPANION_DATA_DIR to use the cache and the download instead.",
                )
            return path

    cached = cache_dir() / entry.filename
    if cached.is_file():
        if sha256_of(cached) == entry.sha256:
            return cached
        # The cache holds only verified files, so a bad one was damaged on disk: drop it, refetch.
        cached.unlink()

    if offline:
        raise DataUnavailableError(
            f"{entry.name}: no verified copy on disk and downloads are off.\n"
            f"  looked in  $COMPANION_DATA_DIR ({mirror or 'unset'}) and {cached.parent}\n"
            f"  file       {entry.filename} (sha256 {entry.sha256})\n"
            f"  source URL {entry.url}\n"
            f"Fix: set COMPANION_DATA_DIR to a folder that holds {entry.filename}, "
            "or allow downloads."
        )
    try:
        _download(entry, cached)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DataUnavailableError(
            f"{entry.name}: download failed ({err}).\n"
            f"  source URL {entry.url}\n"
            f"  file       {entry.filename} (sha256 {entry.sha256})\n"
            f"Fix: check your internet connection, or set COMPANION_DATA_DIR to a folder that "
            f"holds {entry.filename}."
        ) from err
    return cached
