"""Small helpers every chapter uses: seeding, picking a device, glue, and the CLIs' parser."""
from __future__ import annotations

import argparse
import random
import sys
from typing import NoReturn

import torch

__all__ = ["set_seed", "get_device", "glue", "OneLineErrorParser"]


def set_seed(seed: int = 1337) -> torch.Generator:
    """Seed Python and torch so figures and numbers repeat.

    Returns a torch.Generator seeded the same way.
    """
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """`prefer` if given, else CUDA, then Apple's MPS, then CPU."""
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def glue(name: str, value, display: bool = True) -> None:
    """Store `value` for the book's prose ({glue} roles) when built with Jupyter Book.

    Elsewhere just show it.

    This keeps every number quoted in the text tied to the cell that computed it.
    """
    try:
        from myst_nb import glue as _glue
    except ImportError:  # Colab and plain Jupyter have no myst_nb
        if display:
            print(f"{name} = {value}")
        return
    _glue(name, value, display=display)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error:` line and exit code 2 (the usage is in --help).

    The companion's command lines (train, serve, posttrain) share it, so a bad flag reads the
    same everywhere. Example: OneLineErrorParser(prog="x").parse_args(["--nope"]) prints
    "error: unrecognized arguments: --nope" to stderr and raises SystemExit(2).
    """

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
