# medkit — the two commands of the README, and the steps they are made of.
#   make pipeline          # main job: set up, build data, fetch model, run every notebook (PROFILE=cpu)
#   make test              # the test suite (CI runs this via .ci/run)
#   make test-fast         # the unit tests without model loads, training or notebooks (the edit loop)
# Override the profile with PROFILE=smoke or PROFILE=gpu.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= cpu
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup data model notebooks pipeline test test-fast bench lock clean-results sync-notebooks

setup: $(VENV)/.medkit-installed

$(VENV)/.medkit-installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0 -c constraints.txt
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

data: setup
	$(PY) -m medkit build-data

model: setup
	$(PY) -m medkit fetch-model

notebooks: setup
	$(PY) -m medkit run-notebooks --profile $(PROFILE)

pipeline: setup
	$(PY) -m medkit pipeline --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not notebook"

sync-notebooks: setup
	$(PY) -m jupytext --sync notebooks/[0-9][0-9]_*.ipynb

bench: setup
	$(PY) -m medkit bench

lock: setup
	{ head -2 constraints.txt; $(PY) -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
