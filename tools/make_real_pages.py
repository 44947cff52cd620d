"""Build companion/data/real_pages.json.gz: real HTML pages that no one on this project wrote.

Source: the Python 3.11 documentation as Debian ships it (`apt-get install python3-doc`, files under
/usr/share/doc/python3.11/html/library). Licence: PSF License Version 2 (see
companion/data/REAL_PAGES_SOURCES.md). Each record keeps the page's HTML, its quality label by the
rule stated below, and the text trafilatura extracts from it (the reference extractor; the tests
check that the stored text is what the pinned trafilatura returns).

Quality rule: a Sphinx chapter-overview page (its body is a `toctree-wrapper`, a list of links to
other pages) is "bad"; a module reference page (prose, signatures and examples) is "good".

Run: python tools/make_real_pages.py  (needs python3-doc and trafilatura)
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import trafilatura

ROOT = Path("/usr/share/doc/python3.11/html/library")
OUT = Path(__file__).resolve().parents[1] / "companion" / "data" / "real_pages.json.gz"
OVERVIEW = ["archiving", "persistence", "frameworks", "functional", "fileformats", "binary",
            "windows", "i18n", "unix", "crypto", "mm", "distribution", "custominterp", "ipc"]
MODULES = ["secrets", "gzip", "zlib", "bisect", "heapq", "fnmatch", "glob", "atexit", "getopt",
           "sched", "numbers", "fractions", "graphlib", "reprlib", "shelve", "filecmp",
           "contextvars", "webbrowser", "mimetypes", "email.utils", "http.cookiejar", "wave",
           "cmath", "queue", "selectors", "gc", "tokenize", "binascii", "pty", "syslog"]


def main() -> None:
    pages = []
    for name in OVERVIEW + MODULES:
        html = (ROOT / f"{name}.html").read_text(encoding="utf-8")
        label = "bad" if "toctree-wrapper" in html else "good"
        assert label == ("bad" if name in OVERVIEW else "good"), name
        ref = trafilatura.extract(html, include_comments=False) or ""
        pages.append({"name": f"library/{name}.html", "label": label, "html": html,
                      "trafilatura": ref})
    meta = {"source": "Python 3.11.2 documentation, Debian package python3-doc "
                      "(/usr/share/doc/python3.11/html)",
            "licence": "PSF License Version 2; Copyright (c) 2001-2023 Python Software Foundation; "
                       "All Rights Reserved",
            "reference": f"trafilatura {trafilatura.__version__}, extract() defaults",
            "quality_rule": "bad = Sphinx chapter-overview page (body is a toctree-wrapper link "
                            "list); good = module reference page"}
    with gzip.open(OUT, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump({"meta": meta, "pages": pages}, f)
    print(f"{len(pages)} pages -> {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
