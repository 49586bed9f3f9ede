# Two commands for a new user: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/demo
DATA_DIR ?= data/synthetic
PYTEST_ARGS ?=

.PHONY: venv demo test lint format bench bench-quick browser clean

venv: $(STAMP)

# Reinstall whenever pyproject.toml (the one dependency list) changes.
$(STAMP): pyproject.toml
	@echo ">> creating/refreshing $(VENV) (first run installs torch & co: a few minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[lab,test,ray]"
	@touch $(STAMP)

demo: venv
	@echo ">> demo: synthetic Carvana -> EDA -> split -> train demo members -> ensemble -> submission"
	$(PY) -m kaggle_utils.pipeline params/demo/ensemble.yaml --data-dir $(DATA_DIR) --run-dir $(RUN_DIR) --make-synthetic

browser:
	@bash scripts/install_browser.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: venv browser lint
	@echo ">> running the test suite"
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

# CPU benchmarks, then the GPU scripts (they say so and exit 0 where no CUDA device exists).
bench: venv
	@for b in bench/bench_*.py bench/gpu_*.py; do echo ">> $$b"; $(PY) $$b || exit 1; done

bench-quick: venv
	@for b in bench/bench_*.py bench/gpu_*.py; do echo ">> $$b --quick"; $(PY) $$b --quick || exit 1; done

# The GPU suite (docs/gpu.md): here it runs its CPU path (the GPU sections skip, saying so); on a
# lent GPU machine it is run through the `run` tool after `bench/gpu_suite.py --prepare`.
.PHONY: gpu-suite
gpu-suite: venv
	$(PY) bench/gpu_suite.py --out runs/gpu_suite

clean:
	rm -rf build runs test-artifacts .pytest_cache .ruff_cache
