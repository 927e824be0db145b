# Shoal: two commands. `make up` starts the platform with the example deployed;
# `make test` runs the whole test suite. Each installs what it needs into .venv.
# The first python3.11 on PATH that every user can run (instances run as their own uids and
# need it too), else the first one: tools/pick-python says which.
PYTHON ?= $(shell tools/pick-python)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Exactly the versions that were tested: requirements.lock (hashes included) is what gets
# installed; pyproject.toml keeps the ranges it was computed from (`make lock` re-computes it).
LOCK := requirements.lock
PIP_VERSION := 26.3

.PHONY: up test test-slow lint bench bench-floods bench-grpc bench-scale clean lock lockcheck

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)

$(STAMP): pyproject.toml $(LOCK) tools/lock.py | $(BIN)/python
	@$(PYTHON) tools/lock.py check
	$(BIN)/python tools/lock.py sync $(BIN)/python
	touch $(STAMP)

# pyproject.toml and the lock must agree before anything runs.
lockcheck:
	@$(PYTHON) tools/lock.py check

# Re-resolve pyproject.toml's ranges to the newest releases that satisfy them, then install them.
lock: | $(BIN)/python
	test -x $(BIN)/uv || $(BIN)/pip install -q "$$(grep -m1 '^uv==' $(LOCK) | cut -d' ' -f1)"
	UV=$(BIN)/uv $(BIN)/python tools/lock.py write $(ARGS)
	$(BIN)/python tools/lock.py sync $(BIN)/python
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/shoal up --example

test: lockcheck $(STAMP)
	$(BIN)/ruff check shoal tests bench tools
	$(BIN)/ruff format --check shoal tests bench tools
	$(BIN)/mypy
	$(BIN)/pytest -n 2 -q

# Drills and store outages: real faults under traffic, one at a time (not in CI).
test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow 

bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

# Another client's latency while HTTP/2 floods hit the gateway (about 45 s).
bench-floods: $(STAMP)
	$(BIN)/python -m bench.floods $(ARGS)

# Unary gRPC calls to a grpcio server, direct and through the mesh (about 1 minute).
bench-grpc: $(STAMP)
	$(BIN)/python -m bench.grpc $(ARGS)

# What one change costs the control plane as the cluster grows, on a real shoal up per size
# (about 2.5 minutes; ARGS="--in-process" for the snapshot code alone, about a minute).
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale $(ARGS)

clean:
	rm -rf $(VENV) .shoal .pytest_cache .mypy_cache .ruff_cache
