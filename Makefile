# Quick start: `make run-local` (the main job on the embedded default) and `make test` (the whole suite).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run-local test test-quick lint install install-dev browser wrk bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

# The dashboard's browser test drives the system Chromium (Playwright's own browser downloads are not used).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	@command -v chromium >/dev/null 2>&1 || { echo "Installing Chromium for the dashboard's browser test..."; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

# wrk loads the HTTP app from outside Python in `fraudctl bench` (and its wrapper's test).
wrk:
	@command -v wrk >/dev/null 2>&1 || { echo "Installing wrk for the HTTP benchmark..."; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk; }

install-dev: $(VENV)/.installed-dev browser wrk

run-local: install
	$(BIN)/fraudctl up

test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick part of the suite: no Ray cluster, no Serve, no browser (`-m "not slow"`).
test-quick: install-dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check cluster training serve simulation fraudctl tests
	$(BIN)/ruff format --check cluster training serve simulation fraudctl tests
	$(BIN)/lint-imports

bench: install wrk
	$(BIN)/fraudctl bench

clean:
	rm -rf $(VENV) .fraud .pytest_cache
