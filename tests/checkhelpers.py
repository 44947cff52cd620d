"""Shared by the tests of the exercise self-checks: a stub, and assertions that a check fails with a hint or passes."""
from __future__ import annotations

import pytest

from companion.checks import ExerciseFailed


def stub(*args):
    raise NotImplementedError("write your code here")


def fails_with(check, fn, fragment: str) -> None:
    with pytest.raises(ExerciseFailed) as info:
        check(fn)
    assert fragment in str(info.value), str(info.value)


def passes(check, fn, capsys) -> None:
    check(fn)
    assert "passed" in capsys.readouterr().out
