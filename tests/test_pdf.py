"""The PDF as a reader gets it: every worked solution's code, the stubs, and chapter 3's CJK and emoji.

Needs `_build/latex/book.pdf` (make pdf) and poppler's pdftotext/pdffonts. Where they are missing
the tests skip, unless COURSE_REQUIRE_PDF=1, which .ci/run sets after it builds the PDF.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PDF = Path(os.environ.get("COURSE_BUILD_DIR", ROOT / "_build")) / "latex" / "book.pdf"
REGION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)


@pytest.fixture(scope="module")
def pdf_text() -> str:
    missing = ("the PDF is not built (run `make pdf`)" if not PDF.exists() else
               "pdftotext is not installed (apt-get install poppler-utils)"
               if not shutil.which("pdftotext") else None)
    if missing:
        if os.environ.get("COURSE_REQUIRE_PDF") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    text = subprocess.run(["pdftotext", "-layout", str(PDF), "-"], capture_output=True,
                          text=True, check=True).stdout
    return text


def _squash(s: str) -> str:
    # pdftotext may break a long code line or insert spaces; compare without whitespace.
    return re.sub(r"\s+", "", s)


def test_page_count_is_sane():
    if not PDF.exists():
        pytest.skip("the PDF is not built")
    info = subprocess.run(["pdfinfo", str(PDF)], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))
    chapters = len(list((ROOT / "book").glob("[0-9][0-9]_*.md")))
    assert 10 * chapters <= pages <= 80 * chapters, f"{pages} pages for {chapters} chapters"


def _solution_lines() -> list[tuple[str, str]]:
    """The longest line of code of every worked solution, by exercise source."""
    found = []
    for src in sorted((ROOT / "exercises" / "src").glob("[0-9]*.md")):
        for region in REGION.findall(src.read_text()):
            code = [l.split("  #")[0].strip() for l in region.splitlines()
                    if l.strip() and not l.strip().startswith("#")]
            if code:
                found.append((src.name, max(code, key=len)))
    return found


def test_every_worked_solution_is_printed_in_the_pdf(pdf_text):
    squashed = _squash(pdf_text)
    missing = [(name, line) for name, line in _solution_lines() if _squash(line) not in squashed]
    assert not missing, f"{len(missing)} solutions are not in the PDF, e.g. {missing[:3]}"


def test_the_exercises_part_prints_the_stubs(pdf_text):
    assert pdf_text.count("NotImplementedError") >= len(_solution_lines())


def test_chapter_3s_cjk_and_emoji_have_glyphs(pdf_text):
    assert "生きるべきか" in pdf_text
    fonts = subprocess.run(["pdffonts", str(PDF)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"NotoSans\w*CJK", fonts), "no CJK font embedded"
    assert "Symbola" in fonts, "no emoji font embedded"


def test_widgets_print_their_default_not_their_repr(pdf_text):
    reprs = re.findall(r"[VH]Box\(children=.{0,60}", pdf_text)
    assert not reprs, f"the PDF prints {len(reprs)} widget reprs, e.g. {reprs[:2]}"


def test_every_character_has_a_glyph():
    log = PDF.with_suffix(".log")
    if not log.exists():
        if os.environ.get("COURSE_REQUIRE_PDF") == "1":
            pytest.fail(f"{log} is missing: the XeLaTeX log is needed to check glyphs")
        pytest.skip("the PDF is not built")
    missing = sorted(set(re.findall(r"Missing character: There is no (.+?) in font",
                                    log.read_text("utf-8", errors="replace"))))
    assert not missing, f"characters with no glyph in the PDF's fonts: {missing[:10]}"


def test_the_solutions_part_is_titled_solutions():
    tex = PDF.with_suffix(".tex")
    if not tex.exists():
        if os.environ.get("COURSE_REQUIRE_PDF") == "1":
            pytest.fail(f"{tex} is missing")
        pytest.skip("the PDF is not built")
    text = tex.read_text("utf-8")
    start = text.find(r"\part{Solutions}")
    assert start >= 0, "the PDF has no part titled Solutions"
    end = text.find(r"\part{", start + 1)
    part = text[start:end if end > 0 else len(text)]
    titles = re.findall(r"\\chapter\{([^}]*)\}", part)
    assert titles, "the Solutions part has no chapters"
    wrong = [t for t in titles if "Exercises" in t or "Solutions" not in t]
    assert not wrong, f"solution chapters not titled 'N. Solutions: ...': {wrong[:3]}"
