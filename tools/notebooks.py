"""Generate the course's .ipynb files from their MyST Markdown sources.

    python tools/notebooks.py            # write exercises/, solutions/ and book/*.ipynb
    python tools/notebooks.py --check    # exit 1 and list the files that are out of date

Sources and outputs:
- exercises/src/NN_topic.md is the one source of truth for chapter NN's exercises. Code between
  `### BEGIN SOLUTION` and `### END SOLUTION` is the worked answer; `# TODO: ...` lines right
  after BEGIN say what to write and become the stub's message. Cells tagged `solution-only`
  appear only in solutions/.
  Hints are markdown, in `:::{hint}` blocks (colon fences) below the exercise: each names an
  idea, never the code. They become `<details>` folds, which Colab, Jupyter and the HTML book
  all show closed until the reader opens them.
  -> exercises/NN_topic.ipynb: each region replaced by `raise NotImplementedError("<todo>")`.
  -> solutions/NN_topic.ipynb: markers removed, solution cells folded in the HTML (hide-input;
     the PDF prints them in full, see book/_ext/course.py).
- book/NN_topic.md -> book/NN_topic.ipynb, so the book's Colab button opens a notebook Colab reads.
Every generated notebook starts with a Colab set-up cell; the repository URL comes from
_config.yml (repository.url) and nowhere else. Cell ids are derived from positions, so
regenerating an unchanged source rewrites identical bytes.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
import textwrap
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
TODO = re.compile(r"^\s*# TODO:\s?(.*)$")
# The old name put hints in the stub's error message, where the reader sees them first.
OLD_HINT = re.compile(r"^\s*# HINT:")
HINT_BLOCK = re.compile(r"^:::\{hint\}[ \t]*(.*?)\n(.*?)^:::[ \t]*$", re.M | re.S)

SETUP = '''\
# Set-up for Google Colab: install the course's companion package and fetch the data.
# Anywhere else this cell does nothing: `make book` and `make test` have installed it already.
import sys

if "google.colab" in sys.modules:
    !pip install -q "llm-course-companion @ git+{url}"{extra}
    from companion.data import fetch

    for name in {data!r}:
        fetch(name)'''


def repository_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]["url"].rstrip("/")


def setup_cell(meta: dict) -> nbformat.NotebookNode:
    """The Colab cell, from the source's `companion:` front matter (`data`, and `pip` extras)."""
    data = meta.get("data", ["tinyshakespeare"])
    # Packages a page needs beyond the companion, e.g. Sphinx for its human-translated catalogs.
    extra = "".join(f'\n    !pip install -q "{pkg}"' for pkg in meta.get("pip", []))
    cell = nbformat.v4.new_code_cell(SETUP.format(url=repository_url(), data=data, extra=extra))
    cell.metadata = {"tags": ["colab-setup", "remove-cell"]}
    return cell


def raise_line(indent: str, message: str, width: int = 100) -> list[str]:
    """The stub's `raise NotImplementedError(...)`, wrapped to `width` columns.

    >>> raise_line("    ", "square it.")
    ["    raise NotImplementedError('square it.')"]
    """
    line = f"{indent}raise NotImplementedError({message!r})"
    if len(line) <= width:
        return [line]
    inner = indent + " " * 4
    # Break after spaces so that the joined pieces read exactly as the message.
    pieces = textwrap.wrap(message, width=width - len(inner) - 3, drop_whitespace=False)
    return [f"{indent}raise NotImplementedError(", *(f"{inner}{p!r}" for p in pieces),
            f"{indent})"]


def split_solution(source: str) -> tuple[str, str, bool]:
    """Return (stub source, solution source, had_region) for one code cell."""
    stub: list[str] = []
    sol: list[str] = []
    inside = found = seen_code = False
    todos: list[str] = []
    indent = ""
    for line in source.splitlines():
        if OLD_HINT.match(line):
            raise ValueError("`# HINT:` is retired: say what to write with `# TODO:` and put the"
                             f" idea in a :::{{hint}} block below the exercise, in:\n{source}")
        if m := BEGIN.match(line):
            if inside:
                raise ValueError(f"nested BEGIN SOLUTION in:\n{source}")
            inside = found = True
            seen_code, todos, indent = False, [], m.group(1)
        elif END.match(line):
            if not inside:
                raise ValueError(f"END SOLUTION without BEGIN in:\n{source}")
            message = " ".join(todos) or "write your code here"
            stub.extend(raise_line(indent, message))
            inside = False
        elif inside:
            todo = TODO.match(line)
            if todo and not seen_code:  # TODO lines count only before the region's first code
                todos.append(todo.group(1).strip())
            else:
                seen_code = seen_code or bool(line.strip())
                sol.append(line)
        else:
            stub.append(line)
            sol.append(line)
    if inside:
        raise ValueError(f"BEGIN SOLUTION without END in:\n{source}")
    return "\n".join(stub), "\n".join(sol), found


def fold_hints(markdown: str) -> str:
    """Turn each `:::{hint}` block into a closed `<details>` fold.

    >>> fold_hints(":::{hint}\nCount pairs.\n:::")
    '<details class="hint">\n<summary>Hint</summary>\n\nCount pairs.\n\n</details>'
    """
    def fold(m: re.Match) -> str:
        title = m.group(1).strip() or "Hint"
        return (f'<details class="hint">\n<summary>{title}</summary>\n\n'
                f"{m.group(2).strip()}\n\n</details>")
    return HINT_BLOCK.sub(fold, markdown)


def clean(nb: nbformat.NotebookNode, stem: str) -> nbformat.NotebookNode:
    """Drop jupytext's bookkeeping and give every cell a stable id."""
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        cell.id = f"{stem[:40]}-{i:03d}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def exercise_pair(src: Path) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    nb = jupytext.read(src)
    meta = nb.metadata.pop("companion", {})
    ex, sol = copy.deepcopy(nb), copy.deepcopy(nb)
    ex.cells, sol.cells = [setup_cell(meta)], [setup_cell(meta)]
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "solution-only" in tags:
            sol.cells.append(copy.deepcopy(cell))
            continue
        if cell.cell_type != "code":
            md = copy.deepcopy(cell)
            md.source = fold_hints(md.source)
            ex.cells.append(md)
            sol.cells.append(copy.deepcopy(md))
            # "# 3. Exercises: ..." heads the solutions as "# 3. Solutions: ..." (sidebar, PDF TOC)
            sol.cells[-1].source = re.sub(r"^# (\d+)\. Exercises:", r"# \1. Solutions:",
                                          md.source, count=1, flags=re.M)
            continue
        stub_src, sol_src, had = split_solution(cell.source)
        e, s = copy.deepcopy(cell), copy.deepcopy(cell)
        e.source, s.source = stub_src, sol_src
        if had:
            # Folded in the HTML; book/_ext/course.py unfolds `solution` cells in the PDF.
            s.metadata["tags"] = sorted(set(tags) | {"hide-input", "solution"})
            s.metadata["jupyter"] = {"source_hidden": True}
        ex.cells.append(e)
        sol.cells.append(s)
    return clean(ex, src.stem), clean(sol, src.stem)


def chapter_notebook(src: Path) -> nbformat.NotebookNode:
    nb = jupytext.read(src)
    nb.cells.insert(0, setup_cell(nb.metadata.pop("companion", {})))
    return clean(nb, src.stem)


def targets() -> dict[Path, nbformat.NotebookNode]:
    out: dict[Path, nbformat.NotebookNode] = {}
    for src in sorted((ROOT / "exercises" / "src").glob("[0-9]*.md")):
        ex, sol = exercise_pair(src)
        out[ROOT / "exercises" / f"{src.stem}.ipynb"] = ex
        out[ROOT / "solutions" / f"{src.stem}.ipynb"] = sol
    for src in sorted((ROOT / "book").glob("[0-9]*.md")):
        out[src.with_suffix(".ipynb")] = chapter_notebook(src)
    return out


def render(nb: nbformat.NotebookNode) -> str:
    nbformat.validate(nb)
    return nbformat.writes(nb, version=4) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale files instead of writing them")
    args = parser.parse_args(argv)
    stale = []
    for path, nb in targets().items():
        text = render(nb)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("Out of date (run `make exercises`):", *stale, sep="\n  ")
        return 1
    print(f"{'stale' if args.check else 'wrote'}: {len(stale)} notebook(s)" + (
        "" if not stale else "\n  " + "\n  ".join(map(str, stale))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
