"""Shared machinery for the exercise self-checks.

Run the learner's code, fail with a specific hint.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ExerciseFailed", "call", "fail", "passed", "as_tensor", "as_scalar"]


class ExerciseFailed(AssertionError):
    """A self-check found a wrong answer; the message says what broke and how to look for it."""


def fail(exercise: str, message: str) -> None:
    """Raise ExerciseFailed with the message alone: no chained traceback from the checks."""
    __tracebackhide__ = True  # IPython and pytest leave this frame out of the traceback
    raise ExerciseFailed(f"Exercise {exercise}: {message}") from None


def passed(exercise: str, message: str) -> None:
    print(f"PASS  Exercise {exercise} passed: {message}")


def call(exercise: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the learner's function; turn a stub or a crash into a failure that names the input."""
    __tracebackhide__ = True
    if not callable(fn):
        fail(exercise, f"expected a function, got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        fail(exercise, "not implemented yet: replace the `raise NotImplementedError(...)` line "
                       "with your code.")
    except ExerciseFailed:
        raise
    except Exception as err:  # noqa: BLE001 - any crash in learner code becomes a hint
        shown = ", ".join(_short(a) for a in args)
        # the learner's own line that raised, in place of the traceback through the checks
        where = traceback.extract_tb(err.__traceback__)[-1]
        fail(exercise, f"your function raised {type(err).__name__}: {err}\n  on input ({shown})"
                       f"\n  at line {where.lineno}: {where.line}")


def as_tensor(exercise: str, value: Any, what: str) -> torch.Tensor:
    """Accept tensors, NumPy arrays and nested lists; anything else is a failure."""
    try:
        return torch.as_tensor(value)
    except Exception:  # noqa: BLE001
        fail(exercise, f"{what} should be a tensor (or array-like), got {type(value).__name__}")


def as_scalar(exercise: str, value: Any, what: str) -> float:
    """Accept a Python number or a one-element tensor.

    Anything else is a failure that says what came back.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            fail(exercise, f"{what} should be one number, got a tensor of shape "
                           f"{tuple(value.shape)}; did you forget to average?")
        return float(value.item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    fail(exercise, f"{what} should be one number, got {type(value).__name__}"
                   + (": did you forget to return it?" if value is None else ""))


def _short(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}" if x.numel() > 8 else f"tensor({x.tolist()})"
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."
