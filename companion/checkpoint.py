"""Checkpoints as plain dicts: tensors and plain Python values, saved atomically.

Loaded with weights_only=True.

A checkpoint never pickles a class, so loading one cannot run code and survives refactors of the
companion. Introduced in chapter 7.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT_VERSION", "CheckpointError", "rng_state", "set_rng_state", "save_checkpoint",
           "load_checkpoint", "require_keys", "check_sharded", "resolve_sharded"]

FORMAT_VERSION = 1
REQUIRED = ("format_version", "model", "step")


class CheckpointError(ValueError):
    """A file that is not a readable companion checkpoint; the message names the file and why.

    Example: load_checkpoint("notes.txt") -> CheckpointError("notes.txt is not a PyTorch ...")
    """


def rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """Every random stream a training run draws from.

    Python, torch CPU, CUDA if present, and `generators`.

    Example: rng_state(torch.Generator().manual_seed(0))["generators"][0].dtype -> torch.uint8
    """
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        # tuples of ints are plain values; weights_only loads them back as they were
        "python": [py_version, list(py_internal), py_gauss],
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], *generators: torch.Generator) -> None:
    """Restore what `rng_state` captured, into the same generators in the same order."""
    saved = state.get("generators", [])
    if len(saved) != len(generators):
        raise ValueError(f"the checkpoint holds {len(saved)} generator states but "
                         f"{len(generators)} generators were given")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, saved):
        g.set_state(s)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write `checkpoint` to `path` atomically.

    A temporary file in the same folder, then os.replace.

    A crash mid-write leaves the previous checkpoint intact, never a truncated one, because
    os.replace swaps the name in one step on POSIX and Windows alike. Returns the path.
    """
    path = Path(path)
    missing = [k for k in REQUIRED if k not in checkpoint]
    if missing:
        raise ValueError(f"a checkpoint needs the keys {list(REQUIRED)}; missing {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    weights_only=True refuses anything but tensors and plain values. A missing file raises
    FileNotFoundError; an empty, truncated, corrupt or foreign one a CheckpointError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    # torch.save writes a zip archive whose directory sits at the end: a truncated or
    # foreign file fails here, before the unpickler sees a byte of it
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: no complete zip archive "
                              "(truncated, corrupt or another format)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} holds more than tensors and plain values, which "
                              f"weights_only=True refuses: {_first_line(err)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}): "
                              f"{_first_line(err)}") from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in REQUIRED):
        raise CheckpointError(f"{path} is not a companion checkpoint: expected a dict with keys "
                              f"{list(REQUIRED)}")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {checkpoint['format_version']}; "
                              f"this companion reads {FORMAT_VERSION}")
    return checkpoint


def require_keys(checkpoint: dict[str, Any], keys: tuple[str, ...], path: str | os.PathLike,
                 purpose: str = "resume") -> None:
    """Raise CheckpointError naming the keys `checkpoint` lacks for `purpose`.

    Example: require_keys({"step": 3}, ("optimizer",), "ckpt.pt") -> CheckpointError(...optimizer)
    """
    missing = [k for k in keys if checkpoint.get(k) is None]
    if missing:
        raise CheckpointError(f"{path} cannot {purpose}: it lacks {', '.join(missing)}")


def check_sharded(folder: str | os.PathLike) -> None:
    """Raise CheckpointError unless `folder` holds a whole torch.distributed.checkpoint save.

    Its .metadata must read, and every shard file it names must exist and be long enough, so a
    missing, unfinished or truncated folder is refused before any rank starts. Example:
    check_sharded("runs/x/ckpt.dcp").
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is missing: the sharded checkpoint's folder of shards")
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder} has no .metadata: an unfinished or foreign sharded "
                              "checkpoint")
    from torch.distributed.checkpoint import FileSystemReader  # only for sharded runs

    try:
        metadata = FileSystemReader(str(folder)).read_metadata()
    except Exception as err:  # noqa: BLE001 - a corrupt .metadata fails in many ways
        raise CheckpointError(f"{folder / '.metadata'} cannot be read ({type(err).__name__}): "
                              "a corrupt sharded checkpoint") from None
    need: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        end = info.offset + info.length
        need[info.relative_path] = max(need.get(info.relative_path, 0), end)
    for name, size in sorted(need.items()):
        shard = folder / name
        if not shard.is_file():
            raise CheckpointError(f"{folder} lacks its shard file {name}")
        if shard.stat().st_size < size:
            raise CheckpointError(f"{shard} is truncated: {shard.stat().st_size} bytes of {size}")


def resolve_sharded(checkpoint: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Point a sharded checkpoint's "sharded" at its folder beside `path`, checked; in place.

    Example: resolve_sharded(load_checkpoint("runs/x/ckpt.pt"), "runs/x/ckpt.pt")["sharded"]
    -> "runs/x/ckpt.dcp". A checkpoint without shards is returned as it is.
    """
    if checkpoint.get("sharded") is not None:
        folder = Path(path).parent / checkpoint["sharded"]
        check_sharded(folder)
        checkpoint["sharded"] = str(folder)
    return checkpoint


def _first_line(err: BaseException) -> str:
    # torch's messages run to paragraphs; the unpickler's own line (or else the first) says
    # what went wrong
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line.removeprefix("WeightsUnpickler error:").split(". Please")[0].strip()
    return lines[0] if lines else type(err).__name__
