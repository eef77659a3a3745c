# make book   execute every chapter at PROFILE (smoke | quick | paper) and build the HTML book
# make test   run the test suite (unit tests, every notebook at smoke, the book build)
# make bench  measure training speed of the pMoE model
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= quick
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: book test bench venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

venv: $(STAMP)

book: $(STAMP)
	$(PY) -m moebackdoor.book execute --profile $(PROFILE)
	$(PY) -m moebackdoor.book build
	@echo "The book is in book/_build/html/index.html"

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m moebackdoor.vision.bench

clean:
	rm -rf book/_build book/chapters
