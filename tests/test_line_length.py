"""Code fits the page: no code line over 100 characters in the companion or any notebook's code cells.

Wider lines hide behind a horizontal scroll in the HTML and break with continuation marks in the PDF.
"""
from __future__ import annotations

import json
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 100
SOURCES = sorted([*ROOT.glob("book/[0-9]*.md"), *ROOT.glob("book/appendix*.md"),
                  *ROOT.glob("exercises/src/[0-9]*.md")])
GENERATED = sorted([*ROOT.glob("exercises/[0-9]*.ipynb"), *ROOT.glob("solutions/[0-9]*.ipynb")])
MODULES = sorted((ROOT / "companion").rglob("*.py"))


def _long(lines: list[str]) -> list[str]:
    return [f"{len(line)}: {line[:60]}..." for line in lines if len(line) > WIDTH]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_source_code_cells_fit_in_100_columns(path: Path):
    nb = jupytext.read(path)
    lines = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()]
    assert not _long(lines), _long(lines)


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_notebook_code_cells_fit_in_100_columns(path: Path):
    cells = json.loads(path.read_text())["cells"]
    lines = [line for c in cells if c["cell_type"] == "code"
             for line in "".join(c["source"]).splitlines()]
    assert not _long(lines), _long(lines)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_companion_modules_fit_in_100_columns(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert not _long(lines), _long(lines)
