"""The book's own Sphinx extension: what the HTML and the PDF need beyond Jupyter Book's defaults.

- MathJax is served from the built site (`_static/mathjax`), so formulas typeset with no network.
  The files come from the pinned `sphinx-mathjax-offline` wheel (MathJax 3, Apache-2.0).
- Exercise hints are `<details class="hint">` folds; static/course.css styles them.
- Worked solutions are folded in the HTML (`hide-input`) but printed in full in the PDF, where a
  fold cannot open. tools/notebooks.py tags those cells `solution`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.fileutil import copy_asset

MATHJAX_PATH = "mathjax/tex-chtml.js"  # relative to _static; _config.yml sets mathjax_path to it


def mathjax_source() -> Path:
    """The MathJax folder inside the sphinx-mathjax-offline wheel (its module name has dashes)."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("offline MathJax needs the sphinx-mathjax-offline package "
                           "(pinned in requirements.txt); run `make book` to install it")
    return Path(spec.origin).parent / "static" / "mathjax"


def copy_mathjax(app: Sphinx, exc: Exception | None) -> None:
    if app.builder.format == "html" and exc is None:
        copy_asset(str(mathjax_source()), str(Path(app.outdir) / "_static" / "mathjax"))


class ShowSolutionsInLatex(SphinxPostTransform):
    """Drop the hide-input fold from solution cells before jupyterbook-latex removes folded input."""

    default_priority = 300  # sphinx-jupyterbook-latex hides `tag_hide-input` at 400
    formats = ("latex",)

    def run(self, **kwargs) -> None:
        for node in self.document.findall(nodes.container):
            if "tag_solution" in node["classes"]:
                node["classes"] = [c for c in node["classes"] if c != "tag_hide-input"]
                node.attributes.pop("hide_mode", None)


def dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Drop repeated <script> entries: sphinx-thebe and sphinx-togglebutton register theirs twice
    under Jupyter Book, and the second `const THEBE_JS_URL` is a SyntaxError in the console."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "",  # None and "" both mean inline
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def add_static(app: Sphinx) -> None:
    app.config.html_static_path.append(str(Path(__file__).parent / "static"))


def setup(app: Sphinx) -> dict:
    mathjax_source()  # fail at the start of a build, not after it
    app.connect("builder-inited", add_static)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    app.add_css_file("course.css")  # the folded hints' look
    app.connect("build-finished", copy_mathjax)
    app.add_post_transform(ShowSolutionsInLatex)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
