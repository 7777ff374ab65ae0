# The README's quick start: `make run` (the service on the embedded default) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-live lint bench reliability

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	# the project itself, editable: puts the `task-manager` command in $(BIN). setuptools warns that a folder
	# named like the package could shadow it; here that folder is the package.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/task-manager serve

test: $(STAMP)
	$(BIN)/python -m pytest

# the contract suite, a replenish cycle and doctor on a real Bitable named by FEISHU_* (README: The live suite)
test-live: $(STAMP)
	TEST_LIVE=1 $(BIN)/python -m pytest tests/live -rs

lint: $(STAMP)
	$(BIN)/ruff check app tests
	$(BIN)/ruff format --check app tests

bench: $(STAMP)
	$(BIN)/python -m bench.run

reliability: $(STAMP)
	RELIABILITY_FULL=1 $(BIN)/python -m pytest tests/reliability
