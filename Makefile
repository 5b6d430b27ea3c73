# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help install demo test unit lint format clean monitoring-tools

help:
	@echo "make demo   start a local Kafka broker, create the topics, and run the end-to-end demo"
	@echo "make test   lint, unit tests and integration tests against a real broker"
	@echo "make unit   unit tests only (no broker, seconds)"
	@echo "make lint   ruff and mypy"
	@echo "make monitoring-tools   install Prometheus and Alertmanager (apt, as root) for the tests"

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

# The integration tests mostly wait on Kafka (group joins, worker start-ups, deadlines), not on the CPU, so
# two pytest-xdist workers run them side by side, each module on one worker (--dist loadscope: its
# module-scoped fixtures are made once, and the secure broker's fixed port is taken once). The fault suite (killed brokers, monitors and replicas) then runs alone, one
# test at a time, as its timings need; both runs go to the end, and either failing fails the target.
# --durations lists the slowest tests, to keep the run within its budget.
TEST_WORKERS ?= 2
test: lint monitoring-tools
	status=0; \
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --ignore=tests/faults --durations=15 $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/pytest tests/faults --durations=5 $(PYTEST_ARGS) || status=$$?; \
	exit $$status

# The real Prometheus, promtool and Alertmanager the integration tests run: Debian bookworm's packages
# (Prometheus 2.42, Alertmanager 0.25), installed once when missing, as the broker fetches the Kafka jars.
# apt-get needs root; the package lists are refreshed only if the first attempt fails.
MONITORING_PACKAGES := prometheus prometheus-alertmanager
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(MONITORING_PACKAGES)
monitoring-tools:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null \
	    && command -v prometheus-alertmanager >/dev/null; then :; \
	else \
	  echo "installing $(MONITORING_PACKAGES) (Debian packages) for the monitoring tests"; \
	  $(APT_INSTALL) || { apt-get update && $(APT_INSTALL); }; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
