# CroCo lab — every target creates the environment first when it is missing.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install pretrain smoke test test-fast test-slow bench lint clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# pip takes torch 2.14.1 / torchvision 0.29.1 from this machine's local wheel store when it has one.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PY) -m pip install --quiet -e ".[dev,slurm]" 2>&1 | { grep -v "^WARNING: Location" || true; }; \
		test $${PIPESTATUS[0]} -eq 0
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned dependencies (torch 2.14.1, torchvision 0.29.1, ...)

pretrain: $(STAMP)  ## the paper's pretraining on the embedded data (generated into data/ on first use)
	$(PY) train.py experiment=pretrain

smoke: $(STAMP)  ## a tiny CroCo that visibly learns, and uses view 2, on a CPU in about 6 minutes
	$(PY) train.py experiment=smoke

test: $(STAMP)  ## every test, slow ones included (what CI runs; ~3.5 min on 2 idle cores)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the suite without the tests marked slow (>20 s each: DDP, multirun, overfitting)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-slow: $(STAMP)  ## only the slow tests
	$(PY) -m pytest -m slow -q $(PYTEST_ARGS)

bench: $(STAMP)  ## benchmarks: model step throughput, data pipeline, pair generation (rows go to docs/benchmarks.md)
	$(PY) -m croco.bench.model
	$(PY) -m croco.bench.data
	$(PY) -m croco.bench.generate

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check src tests train.py generate.py

clean:  ## caches (keeps .venv, data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
