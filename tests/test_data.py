"""Tests for companion.data.fetch (in companion/data/registry.py): mirror, cache, download, and sha256 verification.

Nothing here touches the network: the mirror is $COMPANION_DATA_DIR, and downloads go to
file:// URLs in tmp_path or to a monkeypatched urllib.request.urlopen.
"""
import hashlib
import importlib
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from companion.data import ChecksumError, DataUnavailableError, load_text
from companion.data.registry import REGISTRY, DataFile, fetch

fetch_mod = importlib.import_module("companion.data.registry")

TINY_SHA = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _files_under(folder):
    """Every file (hidden .part temps included) anywhere under `folder`."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


@pytest.fixture
def mirror():
    """The read-only data mirror the course ships; tests that need it skip without it."""
    env = os.environ.get("COMPANION_DATA_DIR")
    if not env or not Path(env).is_dir():
        pytest.skip("COMPANION_DATA_DIR is not set to the data mirror (e.g. /work/shared/data)")
    return Path(env)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty mirror and an empty cache in tmp_path, downloads allowed."""
    empty_mirror = tmp_path / "mirror"
    cache = tmp_path / "cache"
    empty_mirror.mkdir()
    cache.mkdir()
    monkeypatch.setenv("COMPANION_DATA_DIR", str(empty_mirror))
    monkeypatch.setenv("COMPANION_CACHE_DIR", str(cache))
    monkeypatch.delenv("COMPANION_OFFLINE", raising=False)
    return empty_mirror, cache


@pytest.fixture
def local_entry(tmp_path, monkeypatch):
    """Register a small file served from a file:// URL; returns (name, payload bytes, source path)."""
    payload = b"a small registered file\n" * 100
    src = tmp_path / "upstream" / "small.txt"
    src.parent.mkdir()
    src.write_bytes(payload)
    entry = DataFile(
        "test-small",
        src.resolve().as_uri(),
        hashlib.sha256(payload).hexdigest(),
        "small.txt",
        len(payload),
    )
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    return entry, payload


def _forbid_download(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("fetch tried to download, but a verified copy was on disk")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


# --- the mirror -------------------------------------------------------------------------


def test_fetch_tinyshakespeare_from_mirror_matches_pinned_sha256(mirror):
    path = fetch("tinyshakespeare", offline=True)
    assert path == mirror / "tinyshakespeare.txt"
    assert _sha(path) == TINY_SHA == REGISTRY["tinyshakespeare"].sha256


def test_load_text_returns_tinyshakespeare_starting_with_first_citizen(mirror):
    text = load_text("tinyshakespeare")
    assert text.startswith("First Citizen:")
    assert len(text) == 1115394  # pure ASCII: one char per byte


def test_unknown_name_raises_key_error_listing_registered_names():
    with pytest.raises(KeyError) as info:
        fetch("no-such-file")
    message = str(info.value)
    assert "no-such-file" in message
    for name in REGISTRY:
        assert name in message


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registry_entry_is_in_the_mirror_with_its_sha256_and_size(mirror, name):
    entry = REGISTRY[name]
    path = mirror / entry.filename
    assert path.is_file(), f"{entry.filename} missing from the mirror"
    assert path.stat().st_size == entry.size
    assert _sha(path) == entry.sha256


def test_corrupted_mirror_file_raises_checksum_error_with_names_hashes_url_and_fix(
    mirror, tmp_path, monkeypatch
):
    bad_mirror = tmp_path / "bad-mirror"
    bad_mirror.mkdir()
    bad = bad_mirror / "tinyshakespeare.txt"
    shutil.copyfile(mirror / "tinyshakespeare.txt", bad)
    data = bytearray(bad.read_bytes())
    for i in (0, 1000, len(data) - 1):
        data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    actual = _sha(bad)
    monkeypatch.setenv("COMPANION_DATA_DIR", str(bad_mirror))
    monkeypatch.setenv("COMPANION_CACHE_DIR", str(tmp_path / "cache"))

    entry = REGISTRY["tinyshakespeare"]
    with pytest.raises(ChecksumError) as info:
        fetch("tinyshakespeare")
    message = str(info.value)
    assert "tinyshakespeare.txt" in message
    assert entry.sha256 in message
    assert actual in message and actual != entry.sha256
    assert entry.url in message
    assert "Fix" in message


# --- offline -----------------------------------------------------------------------------


def test_offline_miss_raises_data_unavailable_naming_url_and_sha256(isolated):
    entry = REGISTRY["tinyshakespeare"]
    with pytest.raises(DataUnavailableError) as info:
        fetch("tinyshakespeare", offline=True)
    message = str(info.value)
    assert entry.url in message
    assert entry.sha256 in message
    assert _files_under(isolated[1]) == []


def test_companion_offline_env_forbids_download(isolated, monkeypatch):
    monkeypatch.setenv("COMPANION_OFFLINE", "1")
    _forbid_download(monkeypatch)
    entry = REGISTRY["tinyshakespeare"]
    with pytest.raises(DataUnavailableError) as info:
        fetch("tinyshakespeare")
    message = str(info.value)
    assert entry.url in message
    assert entry.sha256 in message


# --- downloads ---------------------------------------------------------------------------


def test_download_from_file_url_lands_verified_in_cache(isolated, local_entry):
    _, cache = isolated
    entry, payload = local_entry
    path = fetch(entry.name)
    assert path == cache / entry.filename
    assert path.read_bytes() == payload
    assert _sha(path) == entry.sha256
    assert _files_under(cache) == [path]  # no .part temp left beside it


def test_second_fetch_returns_cached_copy_without_downloading(isolated, local_entry, monkeypatch):
    entry, payload = local_entry
    first = fetch(entry.name)
    _forbid_download(monkeypatch)
    second = fetch(entry.name)
    assert second == first
    assert second.read_bytes() == payload


def test_cached_copy_is_used_even_when_offline(isolated, local_entry, monkeypatch):
    entry, _ = local_entry
    first = fetch(entry.name)
    _forbid_download(monkeypatch)
    assert fetch(entry.name, offline=True) == first


def test_download_with_wrong_sha256_raises_and_leaves_no_file(isolated, local_entry, monkeypatch):
    _, cache = isolated
    entry, payload = local_entry
    wrong = DataFile(entry.name, entry.url, "0" * 64, entry.filename, entry.size)
    monkeypatch.setitem(REGISTRY, entry.name, wrong)
    with pytest.raises(ChecksumError) as info:
        fetch(entry.name)
    message = str(info.value)
    assert "0" * 64 in message
    assert hashlib.sha256(payload).hexdigest() in message
    assert "Fix" in message
    assert _files_under(cache) == []


class _BrokenResponse:
    """A urlopen() response that yields one block and then loses the connection."""

    headers = {"Content-Length": "2400"}

    def __init__(self):
        self.calls = 0

    def read(self, n=-1):
        self.calls += 1
        if self.calls == 1:
            return b"x" * 100
        raise OSError("connection reset by peer")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_broken_mid_stream_raises_unavailable_and_leaves_nothing(
    isolated, local_entry, monkeypatch
):
    _, cache = isolated
    entry, _ = local_entry
    response = _BrokenResponse()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: response)
    with pytest.raises(DataUnavailableError) as info:
        fetch(entry.name)
    assert response.calls == 2  # some bytes arrived before the failure
    message = str(info.value)
    assert "connection reset by peer" in message
    assert entry.url in message
    assert entry.sha256 in message
    assert _files_under(cache) == []


def test_download_that_cannot_connect_raises_unavailable(isolated, local_entry, tmp_path, monkeypatch):
    entry, _ = local_entry
    gone = DataFile(entry.name, (tmp_path / "missing.txt").as_uri(), entry.sha256, entry.filename)
    monkeypatch.setitem(REGISTRY, entry.name, gone)
    with pytest.raises(DataUnavailableError):
        fetch(entry.name)
    assert _files_under(isolated[1]) == []


def test_corrupted_cached_file_is_replaced_by_fresh_verified_download(isolated, local_entry):
    _, cache = isolated
    entry, payload = local_entry
    path = fetch(entry.name)
    path.write_bytes(b"damaged on disk")
    again = fetch(entry.name)
    assert again == path
    assert again.read_bytes() == payload
    assert _files_under(cache) == [path]


def test_cache_dir_honours_companion_cache_dir_then_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_CACHE_DIR", str(tmp_path / "c"))
    assert fetch_mod.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("COMPANION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch_mod.cache_dir() == tmp_path / "xdg" / "llm-course"


# --- tiktoken offline --------------------------------------------------------------------


@pytest.fixture
def tiktoken_cache():
    env = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not env:
        pytest.skip("TIKTOKEN_CACHE_DIR is unset; point it at the mirror's tiktoken-cache/ to test offline")
    return env


@pytest.mark.parametrize(
    "encoding, ids",
    [("gpt2", [31373, 995]), ("r50k_base", [31373, 995]), ("cl100k_base", [15339, 1917])],
)
def test_tiktoken_encodes_hello_world_offline_from_cache(tiktoken_cache, encoding, ids):
    import tiktoken

    enc = tiktoken.get_encoding(encoding)
    assert enc.encode("hello world") == ids
    assert enc.decode(ids) == "hello world"
