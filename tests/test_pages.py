"""The built book as a reader's browser shows it: headless Chromium, no network, real pages.

Needs `_build/html` (make book) and Chromium with its driver (Debian's chromium and
chromium-driver; .ci/run installs them). Where either is missing the tests skip, unless
COURSE_REQUIRE_PAGES=1, which .ci/run sets after the book build so that a skip cannot hide a
broken page.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# COURSE_BUILD_DIR points at another build (e.g. jupyter-book build --path-output DIR).
HTML = Path(os.environ.get("COURSE_BUILD_DIR", ROOT / "_build")) / "html"
PAGES = ["book/01_language_models.html", "exercises/01_language_models.html",
         "solutions/01_language_models.html"]
# Every chapter, exercise and solution page the sources promise.
ALL_PAGES = [f"{d}/{p.stem}.html" for d in ("book", "exercises", "solutions")
             for p in sorted((ROOT / ("exercises/src" if d != "book" else "book"))
                             .glob("[0-9][0-9]_*.md"))]
CHAPTERS = [p for p in ALL_PAGES if p.startswith("book/")]
REQUIRED = os.environ.get("COURSE_REQUIRE_PAGES") == "1"
# What a reader must never see in a cell's output: the Hub's retry wall, a Python traceback.
BAD_OUTPUT = re.compile(r"Retrying in \d+s|\[Retry \d+/\d+\]|Name or service not known|"
                        r"requesting HEAD https?://|Traceback \(most recent call last\)")
# A glued number shown with its quotes ({glue:} of a str instead of {glue:text}): '36.8%', '+6.16'.
# A string glued with {glue:} renders as its repr; Sphinx's smartquotes curl the quotes.
QUOTED_NUMBER = re.compile(r"(?<![\w'‘’])['‘][-+−]?\d[\d,.]*(?:e[-+]?\d+)?%?['’](?![\w'’])")
# Calls that make a widget: their cell must show something on the static page.
WIDGET_CALL = re.compile(r"\b(?:temperature_sampler|attention_explorer|sampler|sizing_calculator|"
                         r"merge_stepper|tokenizer_playground|interactive|interact)\(")


def _missing() -> str | None:
    if not (HTML / "index.html").exists():
        return "the book is not built (run `make book`)"
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is pinned in requirements.txt)"
    return None


@pytest.fixture(scope="module")
def browser():
    if reason := _missing():
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                # No network at all: every host resolves to nothing, every proxy is a dead port.
                "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _open(driver, page: str) -> dict:
    """Load a page, wait for MathJax to finish, and return what the checks need."""
    driver.get_log("browser"), driver.get_log("performance")  # drop the previous page's entries
    driver.get((HTML / page).as_uri())
    typeset = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const start = Date.now();
        (function wait() {
          const mj = window.MathJax;
          if (mj && mj.startup && mj.startup.promise) {
            mj.startup.promise.then(() => done(true), (e) => done('error: ' + e));
          } else if (!document.querySelector('script[src*="mathjax" i], script[src*="tex-" i]')
                     && document.readyState === 'complete') {
            done('no math');  // Sphinx loads MathJax only on pages that hold math
          } else if (Date.now() - start > 30000) { done(false); } else { setTimeout(wait, 100); }
        })();""")
    info = driver.execute_script("""
        return {
          math: document.querySelectorAll('mjx-container').length,
          text: document.querySelector('main') ? document.querySelector('main').innerText : '',
          // the prose only: code and cell outputs may print a backslash-paren (a regex, say)
          prose: (() => {
            const m = document.querySelector('main');
            if (!m) return '';
            const c = m.cloneNode(true);
            c.querySelectorAll('pre, code, .cell_output, .output').forEach(e => e.remove());
            return c.textContent;
          })(),
          images: Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0]),
          hints: Array.from(document.querySelectorAll('details.hint')).map(d => d.open),
        };""")
    info["typeset"] = typeset
    info["console"] = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    info["requests"] = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    return info


def _built(page: str) -> None:
    """Skip a page this build lacks (a one-chapter build), unless CI requires every page."""
    if not (HTML / page).exists():
        if REQUIRED:
            pytest.fail(f"{page} was not built")
        pytest.skip(f"{page} is not in this build")


@pytest.mark.parametrize("page", ALL_PAGES)
def test_page_typesets_math_offline_with_no_errors_and_its_images_load(browser, page):
    _built(page)
    info = _open(browser, page)
    assert info["typeset"] in (True, "no math"), (
        f"MathJax did not finish on {page}: {info['typeset']}")
    has_math = page in CHAPTERS and "$" in (ROOT / page).with_suffix(".md").read_text()
    if page in PAGES or has_math:
        assert info["math"] > 0, f"{page} shows no typeset formula"  # its source holds formulas
    raw = re.findall(r"\\[(\[]", info["prose"])
    assert not raw, f"{page} still shows {len(raw)} raw TeX delimiters"
    assert not info["console"], f"console errors on {page}: {info['console']}"
    broken = [src for src, ok in info["images"] if not ok]
    assert not broken, f"images that did not load on {page}: {broken}"
    fetched = {m["params"]["request"]["url"].split("?")[0] for m in info["requests"]
               if m["method"] == "Network.requestWillBeSent"}
    remote = sorted(u for u in fetched if not u.startswith(("file:", "data:", "blob:", "about:")))
    assert not remote, f"{page} asked the network for {remote}"


def test_chapter_page_shows_its_figures(browser):
    info = _open(browser, PAGES[0])
    assert len(info["images"]) >= 1 and all(ok for _, ok in info["images"])


def test_exercise_hints_are_folded_until_opened(browser):
    info = _open(browser, PAGES[1])
    assert info["hints"], "the exercise page has no folded hints"
    assert not any(info["hints"]), "a hint is open before the reader asks for it"


def test_no_built_page_loads_mathjax_from_a_cdn():
    if reason := _missing():
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    offenders = [str(p.relative_to(HTML)) for p in HTML.rglob("*.html")
                 if re.search(r"<script[^>]+src=\"https?://[^\"]*mathjax", p.read_text("utf-8"), re.I)]
    assert not offenders, f"pages that load MathJax from a CDN: {offenders[:5]}"
    assert (HTML / "_static" / "mathjax" / "tex-chtml.js").exists()


def _reader_view(driver, page: str) -> dict:
    """At 1280 px wide: widget cells, cell outputs, prose text and blocks that scroll sideways."""
    driver.set_window_size(1280, 900)
    _open(driver, page)
    return driver.execute_script("""
        const visible = el => el && el.offsetHeight > 0 && (el.innerText.trim().length > 0
            || el.querySelector('img, svg, canvas, table'));
        const cells = Array.from(document.querySelectorAll('div.cell'));
        const prose = Array.from(document.querySelectorAll('main p, main li, main td'))
            .filter(el => !el.closest('div.cell')).map(el => {
                const c = el.cloneNode(true);
                c.querySelectorAll('code, pre, mjx-container, script').forEach(n => n.remove());
                return c.textContent; });
        const blocks = Array.from(document.querySelectorAll('div.cell pre, div.cell_output pre'))
            .filter(pre => pre.scrollWidth > pre.clientWidth + 1)
            .map(pre => [pre.scrollWidth, pre.clientWidth, pre.innerText.split('\\n')[0]
                .slice(0, 80)]);
        return {
          cells: cells.map(c => {
            const input = c.querySelector('.cell_input');
            const output = c.querySelector('.cell_output');
            return {input: input ? input.innerText : '', shown: !!visible(output),
                    output: output ? output.innerText : '',
                    view_only: !!(output && output.querySelector(
                        'script[type="application/vnd.jupyter.widget-view+json"]'))
                        && !visible(output)};
          }),
          prose: prose, wide: blocks,
        };""")


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_shows_what_a_reader_should_see_at_1280_px(browser, page):
    _built(page)
    view = _reader_view(browser, page)
    empty = [c["input"].strip().splitlines()[-1] for c in view["cells"]
             if c["view_only"] or (WIDGET_CALL.search(c["input"]) and not c["shown"])]
    bad = [line for c in view["cells"] for line in c["output"].splitlines()
           if BAD_OUTPUT.search(line)]
    quoted = [m.group(0) for text in view["prose"] for m in QUOTED_NUMBER.finditer(text)]
    # Every defect class is reported at once, so one run shows all that a page gets wrong.
    problems = []
    if empty:
        problems.append(f"widget cells that show nothing on the static page: {empty}")
    if bad:
        problems.append(f"outputs show retry or traceback lines ({len(bad)}): {bad[:3]}")
    if quoted:
        problems.append(f"glued numbers in quotes (use {{glue:text}}) ({len(quoted)}): "
                        f"{quoted[:5]}")
    if view["wide"]:
        problems.append(f"{len(view['wide'])} code or output blocks scroll sideways at "
                        f"1280 px, e.g. {view['wide'][:3]}")
    assert not problems, f"{page}:\n" + "\n".join(problems)
