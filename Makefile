# Quickstart targets: each creates .venv if needed and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when the package metadata or the pins change.
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench curve clean

demo: $(STAMP)
	$(BIN)/python examples/quick_rotation.py

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

unit: $(STAMP)
	$(BIN)/python -m pytest

# The honest benchmark in quick mode on the synthetic phantoms: every pretext task against a
# fair from-scratch baseline, 5 split seeds, fractions 5/25/100 % (see docs/benchmark.md).
curve: $(STAMP)
	$(BIN)/python examples/benchmark.py --experiment fundus --mode quick --threads 1
	$(BIN)/python examples/benchmark.py --experiment pancreas --mode quick --threads 2

bench: $(STAMP)
	$(BIN)/python benchmarks/tasks.py
	$(BIN)/python benchmarks/exemplar.py
	$(BIN)/python benchmarks/cpc.py
	$(BIN)/python benchmarks/backbones.py
	$(BIN)/python benchmarks/pretrain.py
	$(BIN)/python benchmarks/distributed.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml requirements-dev.txt
	$(BIN)/python -m pip install --quiet -c requirements-dev.txt -r requirements-dev.txt -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
