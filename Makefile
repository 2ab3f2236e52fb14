# Two entry points for a fresh machine: `make train` (the main job) and `make test`.
# Each creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The local IMDB copy beside the project when there is one; otherwise tfds downloads it.
DATA   ?= $(wildcard ../shared/data/aclImdb.tar.gz)
WORKDIR ?= runs/tutorial

VENV_TF ?= .venv-tf

.PHONY: venv venv-tf train lint test test-all check clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# Keras on TensorFlow for scripts/peer_rounds.sh: a separate environment, because Keras fixes
# its backend per process and TensorFlow's wheels pin their own versions.
venv-tf: $(VENV_TF)/.installed

$(VENV_TF)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_TF)
	$(VENV_TF)/bin/python -m pip install -q --upgrade pip
	$(VENV_TF)/bin/python -m pip install -q -e ".[peers-tf]"
	touch $@

# Train (defaults = the classic tutorial; ARGS="--preset simple-best" etc.), then test.
train: venv
	$(VENV)/bin/stackrnn train $(if $(DATA),--data $(DATA)) --workdir $(WORKDIR) $(ARGS)
	$(VENV)/bin/stackrnn evaluate $(if $(DATA),--data $(DATA)) --workdir $(WORKDIR)

# The quality gate (ruff, mypy), then the default test selection; CI runs exactly this.
lint: venv
	$(VENV)/bin/ruff check stackrnn_jax tests bench scripts
	$(VENV)/bin/mypy

# Most of the suite's time is XLA compiling, one core per compile: two worker processes
# use both cores of a 2-core machine. A worker takes whole files (loadfile), so a file's
# module-level compiled functions and trained fixtures are built once.
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-all: venv
	$(PY) -m pytest -m "" -n $(TEST_WORKERS) --dist loadfile

check: venv
	$(PY) scripts/manual_check.py

clean:
	rm -rf $(VENV) $(VENV_TF) build *.egg-info
