# One place for every command, identical locally and in CI (.ci/run calls `make test`).
# Each target first makes sure .venv exists with the project installed; re-installs only
# when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve stdio test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

## serve: streamable HTTP on http://127.0.0.1:8000/mcp, workspace/ and snapshots/ in the repo
serve: $(STAMP)
	$(BIN)/python main.py --port 8000

## stdio: MCP on stdin/stdout (what Claude Desktop / Claude Code launch)
stdio: $(STAMP)
	$(BIN)/python main.py --stdio

## test: lint, type-check and the whole test suite
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy interp

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

## bench: the core benchmark against jupyter_client + ipykernel, the snapshot benchmark, the
## sandbox A/B (Landlock against --sandbox off), and
## the soak (20 sessions x 500 mixed calls with faults over HTTP, ~2 min)
bench: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python bench/bench_core.py
	$(BIN)/python bench/bench_snapshot.py
	$(BIN)/python bench/bench_sandbox.py
	$(BIN)/python bench/bench_soak.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
