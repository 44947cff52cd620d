"""pytest hooks for the whole repository.

- nbval collects only .ipynb; the chapters are MyST Markdown notebooks, so book/*.md is read
  through jupytext and handed to nbval's own collector.
- book/*.ipynb (generated twins for Colab) and exercises/ (stubs that raise by design) are not
  run by nbval; tests/test_exercises.py runs the exercise notebooks with the opposite expectation.
- Every notebook must finish within NOTEBOOK_BUDGET_S seconds (default 90) on the CI machine:
  the session fails when one does not, and a table of notebook times is printed either way.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent
BUDGET_S = float(os.environ.get("NOTEBOOK_BUDGET_S", "90"))
collect_ignore_glob = ["book/*.ipynb", "exercises/*", "_build/*", ".venv/*", "tools/*"]

_notebook_seconds: dict[str, float] = defaultdict(float)


def _is_myst_notebook(path: Path) -> bool:
    head = path.read_text(encoding="utf-8")[:500]
    return head.startswith("---") and "format_name: myst" in head


def pytest_collect_file(file_path: Path, parent):
    opt = parent.config.option
    if not (getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False)):
        return None
    if file_path.suffix == ".md" and file_path.parent.name == "book" and _is_myst_notebook(file_path):
        return MystNotebook.from_parent(parent, path=file_path)
    return None


def _make_myst_notebook_class():
    import jupytext
    import nbval.plugin

    reader = SimpleNamespace(read=lambda path, as_version=4: jupytext.read(path, as_version=as_version))

    class MystNotebook(nbval.plugin.IPyNbFile):
        """nbval's notebook collector, fed by jupytext instead of nbformat."""

        def collect(self):
            original = nbval.plugin.nbformat
            nbval.plugin.nbformat = reader
            try:
                items = list(super().collect())
            finally:
                nbval.plugin.nbformat = original
            return items

    return MystNotebook


try:
    MystNotebook = _make_myst_notebook_class()
except ImportError:  # nbval or jupytext missing: plain unit tests still run
    MystNotebook = None


def _notebook_of(report) -> str | None:
    path = report.nodeid.split("::")[0]
    if path.endswith((".ipynb", ".md")) and "::Cell" in report.nodeid:
        return path
    return None


def pytest_runtest_logreport(report):
    if (nb := _notebook_of(report)) is not None:
        _notebook_seconds[nb] += report.duration  # setup (kernel start), call and teardown alike


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _notebook_seconds:
        return
    tr = terminalreporter
    tr.section(f"notebook run times (budget {BUDGET_S:.0f} s each)")
    for nb, secs in sorted(_notebook_seconds.items(), key=lambda kv: -kv[1]):
        flag = "  OVER BUDGET" if secs > BUDGET_S else ""
        tr.write_line(f"{secs:7.1f} s  {nb}{flag}")
    over = [nb for nb, s in _notebook_seconds.items() if s > BUDGET_S]
    if over:
        tr.write_line(f"{len(over)} notebook(s) over the {BUDGET_S:.0f} s budget: failing the session.", red=True)


def pytest_sessionfinish(session, exitstatus):
    if any(s > BUDGET_S for s in _notebook_seconds.values()) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
