# The course's commands. `make book` and `make test` each set up .venv on first use.
#   make book       build the HTML book into _build/html
#   make test       unit tests, nbval over every chapter and solution notebook, exercise checks
#   make pdf        build the PDF (needs TeX Live; see README)
#   make exercises  regenerate exercises/, solutions/ and book/*.ipynb from their sources
#   make benchmarks run the speed and memory benchmarks (prints tables, writes JSON)
# Add COURSE_ONLINE=1 to let chapters 6 and 10 download GPT-2 from the Hugging Face Hub.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BOOK_FLAGS ?= -W -n --keep-going
# nbval and the book build both start kernels: make them use this environment's Python.
export JUPYTER_PREFER_ENV_PATH := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# Offline unless the reader asks for network: the chapters that would download GPT-2 (6 and 10)
# print one line saying what they skipped. `make book COURSE_ONLINE=1` lets them download it.
ifneq ($(COURSE_ONLINE),1)
export HF_HUB_OFFLINE := 1
endif

.PHONY: venv book test pdf exercises benchmarks clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	touch $(STAMP)

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . $(BOOK_FLAGS)
	@echo "Open _build/html/index.html"

test: $(STAMP)
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=300 -p no:cacheprovider tests book solutions

pdf: $(STAMP)
	$(VENV)/bin/jupyter-book build . --builder pdflatex
	@ls -l _build/latex/book.pdf

exercises: $(STAMP)
	$(PY) tools/notebooks.py

benchmarks: $(STAMP)
	@for b in benchmarks/bench_*.py; do [ -e "$$b" ] || continue; echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf _build
