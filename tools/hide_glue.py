"""Move a chapter's glue(...) bookkeeping out of the reader's sight (issue 27).

    python tools/hide_glue.py book/07_training.md [...]   # then: python tools/notebooks.py

Each top-level `glue(...)` statement of a visible code cell moves into a new cell, tagged
`remove-cell`, right after it: the page shows the computation, the glue still runs in the same
kernel, and the values are the same. A glue call stays where it is when it sits inside a loop or an
`if`, or when a later statement of its cell reassigns a name it reads (moving it would change the
value). A cell that held nothing but glue is tagged `remove-cell` as a whole. Run the chapter's
nbval afterwards.
"""
import ast
import re
import sys

CELL = re.compile(r"(```\{code-cell\}[^\n]*\n)(.*?)(^```[ \t]*$)", re.S | re.M)

def split_options(body):
    # MyST code-cell options: lines starting with ':' at the top, or a --- yaml block
    lines = body.split("\n")
    if lines and lines[0].strip() == "---":
        end = lines.index("---", 1)
        return "\n".join(lines[:end + 1]) + "\n", "\n".join(lines[end + 1:])
    i = 0
    while i < len(lines) and lines[i].startswith(":"):
        i += 1
    return ("\n".join(lines[:i]) + "\n") if i else "", "\n".join(lines[i:])

def is_glue(stmt):
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "glue")

def stored(stmt):
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}

def process(code):
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    body = tree.body
    lines = code.split("\n")
    moved = []
    for i, st in enumerate(body):
        if not is_glue(st):
            continue
        used = {n.id for n in ast.walk(st) if isinstance(n, ast.Name)}
        later = set().union(*[stored(s) for s in body[i + 1:] if not is_glue(s)]) if body[i+1:] else set()
        if used & later:
            continue
        moved.append(st)
    if not moved:
        return None
    drop = set()
    for st in moved:
        drop.update(range(st.lineno - 1, st.end_lineno))
    kept = [l for j, l in enumerate(lines) if j not in drop]
    glue = [l for j, l in enumerate(lines) if j in drop]
    # collapse runs of blank lines left behind
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")
    return out, "\n".join(glue)

def main(path: str) -> None:
    text = open(path).read()
    count = 0
    def repl(m):
        nonlocal count
        head, body, fence = m.groups()
        opts, code = split_options(body)
        if "remove-cell" in opts or "remove-input" in opts:
            return m.group(0)
        r = process(code.rstrip("\n"))
        if r is None:
            return m.group(0)
        kept, glue = r
        count += glue.count("glue(")
        new = "```{code-cell} ipython3\n:tags: [remove-cell]\n\n" + glue + "\n```"
        if not kept.strip():
            # the whole cell was bookkeeping: hide it
            return new
        return head + opts + kept + "\n" + fence + "\n\n" + new
    text = CELL.sub(repl, text)
    open(path, "w").write(text)
    print(path, "moved", count)

for p in sys.argv[1:]:
    main(p)
