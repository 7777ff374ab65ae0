# The README's quick start: `make run` (the service on the embedded default) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-live lint bench reliability

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m app serve

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
