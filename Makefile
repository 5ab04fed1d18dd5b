# shadowscale: every target installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= out
PY_DIRS := shadowscale agent policies simulators benchmarks tests

.PHONY: setup test unit lint demo bench clean help

help:
	@echo "make demo   - replay the Azure Functions 2019 trace through hpa, keda, kpa, static and oracle"
	@echo "make test   - lint, type-check, layering contracts and the test suite (what CI runs)"
	@echo "make bench  - benchmarks, JSON to stdout"
	@echo "make setup  - create .venv and install shadowscale with its dev extras"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: setup
	$(BIN)/python -m pytest -q -n 2

test: lint unit

demo: setup
	$(BIN)/shadowscale simulate --trace azure-functions-2019 --policies hpa,keda,kpa,static,oracle --out $(OUT)/demo

bench: setup
	$(BIN)/shadowscale bench simulator --json
	$(BIN)/shadowscale bench placement --pods default --seeds 42 --json

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache
