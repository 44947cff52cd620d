"""The notebook generator (tools/notebooks.py) and the shape every chapter page keeps."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("notebooks", ROOT / "tools" / "notebooks.py")
notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(notebooks)
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))


def test_committed_notebooks_are_up_to_date():
    stale = [str(p.relative_to(ROOT)) for p, nb in notebooks.targets().items()
             if not p.exists() or p.read_text(encoding="utf-8") != notebooks.render(nb)]
    assert not stale, f"run `make exercises`; out of date: {stale}"


def test_regeneration_is_byte_stable():
    first = {p: notebooks.render(nb) for p, nb in notebooks.targets().items()}
    second = {p: notebooks.render(nb) for p, nb in notebooks.targets().items()}
    assert first == second


def test_solution_region_becomes_stub_with_todo_and_keeps_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    # TODO: return x squared.\n    return x * x\n    ### END SOLUTION\n"
    stub, sol, found = notebooks.split_solution(src)
    assert found
    assert stub == "def f(x):\n    raise NotImplementedError('return x squared.')"
    assert sol == "def f(x):\n    return x * x"


def test_todo_lines_after_code_stay_in_the_solution():
    src = "### BEGIN SOLUTION\ny = 1\n# TODO: not a todo here\n### END SOLUTION"
    stub, sol, _ = notebooks.split_solution(src)
    assert stub == "raise NotImplementedError('write your code here')"
    assert "# TODO: not a todo here" in sol


def test_a_long_todo_wraps_to_the_page_and_raises_the_whole_message():
    todo = "return the (B, T, T) weights " * 8
    src = f"def f():\n    ### BEGIN SOLUTION\n    # TODO: {todo}\n    return 1\n    ### END SOLUTION"
    stub, _, _ = notebooks.split_solution(src)
    assert max(len(line) for line in stub.splitlines()) <= 100
    namespace: dict = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError) as info:
        namespace["f"]()
    assert str(info.value) == todo.strip()


def test_the_retired_hint_marker_is_refused():
    with pytest.raises(ValueError, match="HINT"):
        notebooks.split_solution("### BEGIN SOLUTION\n# HINT: x = 1\nx = 1\n### END SOLUTION")


def test_hint_blocks_become_closed_details_folds():
    md = "Write it.\n\n:::{hint}\nCount the pairs.\n:::\n\n:::{hint} Hint 2: the edges\nMind the ends.\n:::"
    out = notebooks.fold_hints(md)
    assert out.count('<details class="hint">') == 2 and out.count("</details>") == 2
    assert "<summary>Hint</summary>" in out and "<summary>Hint 2: the edges</summary>" in out
    assert ":::" not in out and "Count the pairs." in out and "<details open" not in out


def _exercise_sections(src: Path) -> list[str]:
    return re.split(r"(?m)^## ", src.read_text())[1:]


# A method call, an index or slice, a matmul, a power, a comparison, a loop: code, not an idea.
CODE_FRAGMENT = re.compile(r"\w\.\w+\(|\w\[[^\]]*\]|\s@\s|\*\*|==|\bfor \w+ in\b|\blambda\b")
EXERCISE_SOURCES = sorted((ROOT / "exercises" / "src").glob("[0-9]*.md"))


@pytest.mark.parametrize("src", EXERCISE_SOURCES, ids=lambda p: p.name)
def test_hints_are_folded_and_never_hold_a_line_of_the_solution(src: Path):
    """Each exercise has a folded hint; neither the hints nor the stub's TODO contain solution code."""
    for section in _exercise_sections(src):
        regions = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", section, re.S)
        if not regions:
            continue
        title = section.splitlines()[0]
        hints = " ".join(m.group(2) for m in notebooks.HINT_BLOCK.finditer(section))
        assert hints, f"{src.name}, '{title}': add a :::{{hint}} block below the exercise"
        fragment = CODE_FRAGMENT.search(hints)
        assert not fragment, f"{src.name}, '{title}': a hint names code (`{fragment.group(0)}`)"
        todos = " ".join(m.group(1) for m in re.finditer(r"# TODO:(.*)", section))
        hints, todos = re.sub(r"\s+", "", hints), re.sub(r"\s+", "", todos)
        for region in regions:
            for line in region.splitlines():
                code = re.sub(r"\s+", "", line.split("#", 1)[0])
                # A hint may hold no line of code at all; a TODO may name the interface the
                # task states (a call such as optimizer.step()), but not a whole line of the answer.
                in_hint = len(code) >= 12 and not code.startswith(("return", "raise"))
                assert not (in_hint and code in hints), (
                    f"{src.name}, '{title}': a hint gives away `{line.strip()}`")
                assert not (len(code) >= 24 and code in todos), (
                    f"{src.name}, '{title}': a TODO gives away `{line.strip()}`")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_objectives_summary_and_exercises(path: Path):
    text = path.read_text()
    assert re.search(r"\{admonition\} Objectives", text), "open with an Objectives admonition"
    assert "\n## Summary" in text and "\n## Exercises" in text, "close with a Summary and Exercises"
    toc = (ROOT / "_toc.yml").read_text()
    assert f"book/{path.stem}" in toc, "add the chapter to _toc.yml"
    exercises = ROOT / "exercises" / f"{path.stem}.ipynb"
    assert exercises.exists() and f"exercises/{path.stem}" in toc and f"solutions/{path.stem}" in toc
