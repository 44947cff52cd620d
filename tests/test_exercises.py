"""The exercise pipeline, end to end: in every exercises/ notebook each check fails on the stub
(with the "not implemented" hint), and in every solutions/ notebook each check passes.

The cells run in this process, in order, the way a learner runs them top to bottom.
Plausible wrong answers for each check are tested in tests/test_checks_chNN.py.
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import matplotlib
import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

import companion.checks
from companion.checks import ExerciseFailed

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parent.parent
CHECK_CALL = re.compile(r"\bcheck_(\d+)_(\d+)\(")
EXERCISES = sorted((ROOT / "exercises").glob("[0-9]*.ipynb"))
_to_python = TransformerManager().transform_cell  # turns `!pip ...` into plain Python


def code_cells(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [_to_python(c.source) for c in nb.cells if c.cell_type == "code"]


def chapter(path: Path) -> int:
    return int(path.name.split("_")[0])


def test_every_chapter_with_exercises_has_a_solution_and_three_checks():
    assert EXERCISES, "no exercise notebooks found"
    for ex in EXERCISES:
        assert (ROOT / "solutions" / ex.name).exists(), f"solutions/{ex.name} is missing"
        checks = {m.group(0) for src in code_cells(ex) for m in CHECK_CALL.finditer(src)}
        assert len(checks) >= 3, f"{ex.name} has {len(checks)} checks; each chapter needs three or more"


SOLUTION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)


def solution_lines(section: str) -> int:
    """Lines of code a learner writes in one exercise: its solution regions, less blanks and comments."""
    return sum(1 for m in SOLUTION.finditer(section) for line in m.group(1).splitlines()
               if line.strip() and not line.strip().startswith("#"))


def exercise_sizes(src: Path) -> dict[int, int]:
    """{exercise number: solution lines} from an exercises/src chapter."""
    parts = re.split(r"\n## Exercise (\d+)", src.read_text("utf-8"))
    return {int(parts[i]): solution_lines(parts[i + 1]) for i in range(1, len(parts), 2)}


def test_exercise_sizes_count_code_lines_only():
    section = ("x\n### BEGIN SOLUTION\na = 1\n\n# why\nb = 2\n### END SOLUTION\n"
               "### BEGIN SOLUTION\nc = 3\n### END SOLUTION\n")
    assert solution_lines(section) == 3
    assert solution_lines("no regions") == 0


@pytest.mark.parametrize("src", sorted((ROOT / "exercises" / "src").glob("[0-9]*.md")),
                         ids=lambda p: p.stem)
def test_every_chapter_has_an_exercise_that_builds_ten_lines_or_more(src: Path):
    # The developers' guide: each chapter has at least one exercise of typically 10-30 lines
    # that builds its hard part; one-line retypes do not count.
    sizes = exercise_sizes(src)
    assert sizes, f"{src.name}: no '## Exercise N' sections found"
    assert max(sizes.values()) >= 10, f"{src.name}: largest exercise solution is {sizes}"


def test_every_check_in_the_package_is_used_by_its_chapter():
    defined = {n for n in dir(companion.checks) if CHECK_CALL.match(n + "(")}
    used = {m.group(0)[:-1] for ex in EXERCISES for src in code_cells(ex) for m in CHECK_CALL.finditer(src)}
    assert defined == used, f"checks defined but unused: {defined - used}; used but undefined: {used - defined}"


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_every_check_fails_on_its_stub(path: Path):
    namespace: dict = {"__name__": "__main__"}
    failed = []
    for src in code_cells(path):
        if CHECK_CALL.search(src):
            with pytest.raises(ExerciseFailed, match="not implemented") as info:
                exec(compile(src, path.name, "exec"), namespace)
            failed.append(str(info.value).split(":")[0])
        else:
            exec(compile(src, path.name, "exec"), namespace)  # stubs only define functions: must not raise
    assert failed, f"{path.name} calls no checks"


@pytest.mark.parametrize("path", [ROOT / "solutions" / p.name for p in EXERCISES], ids=lambda p: p.name)
def test_every_check_passes_on_the_solution(path: Path):
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    n_checks = 0
    for src in code_cells(path):
        n_checks += len(CHECK_CALL.findall(src))
        with contextlib.redirect_stdout(out):
            exec(compile(src, path.name, "exec"), namespace)
    assert out.getvalue().count("passed:") == n_checks > 0, out.getvalue()
