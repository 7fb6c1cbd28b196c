# Everything installs itself: the virtualenv at .venv/ (git-ignored) and the pinned tools in
# ~/.cache/kexp (or $KEXP_CACHE_DIR). `make test` is the whole suite, as CI runs it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: venv tools lint test test-fast up down demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,trainers]'
	@rm -f $(VENV)/.installed-* && touch $@

## tools: build or install the pinned local-stack tools (cached; seconds once built)
tools: venv
	$(VENV)/bin/kexp dev install

## lint: ruff (lint + format check), mypy --strict on kexp, import-linter layer contracts
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## test: the whole suite (lint, unit, integration and slow end-to-end tests on the real stack)
test: lint tools
	$(PY) -m pytest

## test-fast: skip the slow end-to-end tests
test-fast: lint tools
	$(PY) -m pytest -m 'not slow'

## demo: stack, CRDs, operator and two example Experiments to Succeeded (simulated pods)
demo: tools
	scripts/demo

## up / down: the local stack for interactive use
up: tools
	$(VENV)/bin/kexp dev up

down: venv
	$(VENV)/bin/kexp dev down

## chart-sync: regenerate the CRDs and copy them, the dashboards and alert rules into helm/kexp
.PHONY: chart-sync
chart-sync: venv
	$(PY) -m kexp.api.chart_sync
