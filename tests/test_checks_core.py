"""companion.checks._core: a failed check shows its own message, not the checks' traceback."""
import pytest

from companion.checks._core import ExerciseFailed, call


def stub(x):
    raise NotImplementedError("Exercise 0.1")


def crash(x):
    return x / 0


def test_a_stub_fails_with_its_message_and_no_chained_traceback():
    with pytest.raises(ExerciseFailed, match="not implemented yet") as info:
        call("0.1", stub, 3)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_crash_names_the_learners_line_instead_of_chaining():
    with pytest.raises(ExerciseFailed, match=r"ZeroDivisionError.*\n.*\n  at line \d+: return x / 0"
                       ) as info:
        call("0.1", crash, 3)
    assert info.value.__suppress_context__
