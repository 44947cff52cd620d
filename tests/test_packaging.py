"""The Colab set-up cell, run for real: install the companion non-editable from a git URL into a
fresh environment, then run a solutions notebook outside the repository.

This catches packaging mistakes a source checkout hides: a module or data file missing from the
wheel, an import of something only the repository has. The git URL is a local snapshot of the
working tree, and pip runs with --no-index, so nothing leaves the machine. The fresh venv sees the
pinned stack (torch and friends) through a .pth line, but not the editable install of companion.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["solutions/01_language_models.ipynb"]


# The fresh environment must not see a checkout through PYTHONPATH.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", CLEAN_ENV)
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the companion as pip installs it from `git+file://...`."""
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    tmp = tmp_path_factory.mktemp("packaging")
    # A snapshot of the working tree as a git repository: what a push would publish.
    snap = tmp / "course"
    files = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT).stdout
    for rel in filter(None, files.split("\0")):
        if (ROOT / rel).is_file():
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, snap / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    _run([*git, "init", "-q"], cwd=snap)
    _run([*git, "add", "-A"], cwd=snap)
    _run([*git, "commit", "-qm", "snapshot"], cwd=snap)

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # The pinned stack, without running its .pth files (the editable companion lives in one).
    (site / "stack.pth").write_text(sysconfig.get_path("purelib") + "\n")

    # The set-up cell's own pip line, pointed at the snapshot.
    setup = "".join(json.loads((ROOT / NOTEBOOKS[0]).read_text())["cells"][0]["source"])
    spec = re.search(r'pip install -q "([^"]+) @ git\+[^"]+"', setup)
    assert spec, "the Colab set-up cell no longer installs the companion from git"
    _run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation",
          f"{spec.group(1)} @ git+file://{snap}"], env={**CLEAN_ENV, "PIP_CONSTRAINT": ""})
    where = _run([str(py), "-c", "import companion; print(companion.__file__)"], cwd=tmp).stdout
    assert str(site) in where, f"companion was imported from {where}, not the fresh install"
    return py


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_colab_setup_installs_the_companion_and_a_solutions_notebook_runs_outside_the_repo(
        installed, notebook, tmp_path):
    to_python = TransformerManager().transform_cell
    cells = [c["source"] for c in json.loads((ROOT / notebook).read_text())["cells"]
             if c["cell_type"] == "code"]
    script = tmp_path / "notebook.py"
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\n"
                      + "\n".join(to_python("".join(src)) for src in cells))
    done = _run([str(installed), str(script)], cwd=tmp_path,
                env={**CLEAN_ENV, "MPLBACKEND": "Agg",
                     "COMPANION_OFFLINE": "1"}, timeout=600)
    assert done.stdout.count("PASS") >= 3, done.stdout[-2000:]
