# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help install demo test unit lint format clean

help:
	@echo "make demo   start a local Kafka broker, create the topics, and run the end-to-end demo"
	@echo "make test   lint, unit tests and integration tests against a real broker"
	@echo "make unit   unit tests only (no broker, seconds)"
	@echo "make lint   ruff and mypy"

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "modelwatch needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/modelwatch demo

lint: $(BIN)/.installed
	$(BIN)/ruff check schemas services streams tests
	$(BIN)/ruff format --check schemas services streams tests
	$(BIN)/mypy

format: $(BIN)/.installed
	$(BIN)/ruff format schemas services streams tests
	$(BIN)/ruff check --fix schemas services streams tests

unit: $(BIN)/.installed
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
