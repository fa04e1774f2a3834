# The two commands of the README: `make run` and `make test`. Both set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov, the security scanner of tests/test_checkov.py, in a virtualenv of its own: its
# dependencies clash with kfp's. Pinned; the stamp names the version, so a new pin reinstalls.
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

.PHONY: run test lint install bench clean checkov-env

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
	rm -f $(CHECKOV_VENV)/.installed-*
	touch $(CHECKOV_STAMP)

checkov-env: $(CHECKOV_STAMP)

run: $(STAMP)
	NASAGENT_HOME=$${NASAGENT_HOME:-$$PWD/.nasagent} $(BIN)/nasagent search --experiment demo-digits \
		--dataset digits --space metaqnn-small --trials 40 --epochs 10 --workers 2 --seed 0

# ruff (lint and format) and the import-linter layers contract of pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check nasagent tests bench components pipelines images
	$(BIN)/lint-imports

test: $(STAMP) $(CHECKOV_STAMP) lint
	@# The dashboard's browser test drives Debian's Chromium (playwright's own download cannot run here).
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .nasagent

# Targets of the Kubeflow layer and other subsystems live in mk/*.mk, one file each.
-include mk/*.mk
