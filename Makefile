# The two commands of the README: `make run` and `make test`. Both set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	NASAGENT_HOME=$${NASAGENT_HOME:-$$PWD/.nasagent} $(BIN)/nasagent search --experiment demo-digits \
		--dataset digits --space metaqnn-small --trials 40 --epochs 10 --workers 2 --seed 0

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .nasagent

# Targets of the Kubeflow layer and other subsystems live in mk/*.mk, one file each.
-include mk/*.mk
