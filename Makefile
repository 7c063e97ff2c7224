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

# The quick pancreas data-efficiency curve on the synthetic CT phantoms (about 4 minutes).
curve: $(STAMP)
	$(BIN)/pretext3d pretrain --config examples/configs/pancreas_pretrain_rotation.toml
	$(BIN)/pretext3d data-efficiency --config examples/configs/pancreas_data_efficiency.toml

bench: $(STAMP)
	$(BIN)/python benchmarks/tasks.py
	$(BIN)/python benchmarks/exemplar.py
	$(BIN)/python benchmarks/cpc.py
	$(BIN)/python benchmarks/backbones.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml requirements-dev.txt
	$(BIN)/python -m pip install --quiet -c requirements-dev.txt -r requirements-dev.txt -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
