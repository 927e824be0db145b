# Shoal: two commands. `make up` starts the platform with the example deployed;
# `make test` runs the whole test suite. Each installs what it needs into .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test test-slow lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/shoal up --example

test: $(STAMP)
	$(BIN)/ruff check shoal tests bench
	$(BIN)/ruff format --check shoal tests bench
	$(BIN)/mypy
	$(BIN)/pytest -n 2 -q

# Drills and store outages: real faults under traffic, one at a time (not in CI).
test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow 

bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .shoal .pytest_cache .mypy_cache .ruff_cache
