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


def test_solution_region_becomes_stub_with_hint_and_keeps_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    # HINT: square it.\n    return x * x\n    ### END SOLUTION\n"
    stub, sol, found = notebooks.split_solution(src)
    assert found
    assert stub == "def f(x):\n    raise NotImplementedError('square it.')"
    assert sol == "def f(x):\n    return x * x"


def test_hint_lines_after_code_stay_in_the_solution():
    src = "### BEGIN SOLUTION\ny = 1\n# HINT: not a hint here\n### END SOLUTION"
    stub, sol, _ = notebooks.split_solution(src)
    assert stub == "raise NotImplementedError('write your code here')"
    assert "# HINT: not a hint here" in sol


@pytest.mark.parametrize("src", [
    "### BEGIN SOLUTION\nx = 1",
    "x = 1\n### END SOLUTION",
    "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION",
])
def test_unbalanced_markers_are_rejected(src):
    with pytest.raises(ValueError, match="SOLUTION"):
        notebooks.split_solution(src)


def test_colab_setup_cell_uses_the_one_repository_url():
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    for folder in ("exercises", "solutions", "book"):
        for path in (ROOT / folder).glob("[0-9]*.ipynb"):
            first = json.loads(path.read_text())["cells"][0]
            source = "".join(first["source"])
            assert "google.colab" in source and f"git+{url}" in source, path
    # ...and no hand-written source repeats it
    for src in [*CHAPTERS, *(ROOT / "exercises" / "src").glob("*.md")]:
        assert url not in src.read_text(), f"{src} hard-codes the repository URL"


def test_exercise_notebooks_contain_no_solution_code():
    for path in (ROOT / "exercises").glob("[0-9]*.ipynb"):
        text = path.read_text()
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text, path


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_objectives_summary_and_exercises(path: Path):
    text = path.read_text()
    assert re.search(r"\{admonition\} Objectives", text), "open with an Objectives admonition"
    assert "\n## Summary" in text and "\n## Exercises" in text, "close with a Summary and Exercises"
    toc = (ROOT / "_toc.yml").read_text()
    assert f"book/{path.stem}" in toc, "add the chapter to _toc.yml"
    exercises = ROOT / "exercises" / f"{path.stem}.ipynb"
    assert exercises.exists() and f"exercises/{path.stem}" in toc and f"solutions/{path.stem}" in toc
