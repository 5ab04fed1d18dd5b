# shadowscale: every target installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= out
PY_DIRS := shadowscale agent policies simulators benchmarks tests tools

.PHONY: setup test unit lint lock lock-check wheel-check demo demo-agent demo-simulate bench clean help

help:
	@echo "make demo   - the live agent: bundled Kafka broker, simulated cluster, a real trace replayed x30 (60 s)"
	@echo "make demo-simulate - replay the 24 h Azure Functions trace through hpa, keda, kpa, static, oracle, shadowscale"
	@echo "make test   - lint, type-check, layering contracts, lock check, the test suite, the wheel check (CI)"
	@echo "make lock   - re-resolve requirements/agent.lock (the agent image's pinned core dependencies)"
	@echo "make wheel-check - build the wheel, install it with [sim] in a fresh venv and run it as a user would"
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

lock: setup
	$(BIN)/python tools/lock.py

lock-check: setup
	$(BIN)/python tools/lock.py --check

unit: setup
	$(BIN)/python -m pytest -q -n 2

wheel-check: setup
	tools/wheel_check.sh $(BIN)/python

test: lint lock-check unit wheel-check

demo: demo-agent

demo-agent: setup
	$(BIN)/python -m shadowscale.demo --seconds 60 --speed 30 --out $(OUT)/demo-agent

demo-simulate: setup
	$(BIN)/shadowscale simulate --trace azure-functions-2019 --policies hpa,keda,kpa,static,oracle,shadowscale \
		--out $(OUT)/demo-simulate

bench: setup
	$(BIN)/shadowscale bench simulator --json
	$(BIN)/shadowscale bench simulator --trace llm-fleet --json
	$(BIN)/shadowscale bench llm-model --json
	$(BIN)/shadowscale bench placement --pods default --seeds 42 --json

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache
