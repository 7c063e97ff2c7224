# Quickstart targets: each creates .venv if needed and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when the package metadata or the pins change.
STAMP := $(VENV)/.installed

.PHONY: demo test test-interop lint typecheck unit bench reproduce-demo verdict notebooks docs clean

# Both reproductions (pancreas, fundus) in quick mode on the SYNTHETIC phantoms (docs/results.md).
demo: $(STAMP)
	$(BIN)/python examples/quick.py

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks docs
	$(BIN)/ruff format --check src tests examples benchmarks docs

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

unit: $(STAMP)
	$(BIN)/python -m pytest

# timm and torchvision encoders, lightly's losses (tests/interop/test_timm.py, test_lightly.py), in
# an environment of their own:
# no torchvision release loads beside the pinned CPU torch 2.13.0. torch 2.14.1 is a CUDA build
# of about 5.5 GB on x86_64 (it runs on the CPU); CI runs this after `make test`.
INTEROP := .venv-interop
test-interop: $(INTEROP)/.installed
	$(INTEROP)/bin/python -m pytest -p no:cacheprovider tests/interop/test_timm.py tests/interop/test_lightly.py

$(INTEROP)/.installed: requirements-interop.txt pyproject.toml
	$(PYTHON) -m venv $(INTEROP)
	$(INTEROP)/bin/python -m pip install --quiet -r requirements-interop.txt
	$(INTEROP)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

# The verdict on the SYNTHETIC phantoms (docs/results.md): the held-out block of both experiments
# in demo mode, two workers of one thread (about 80 min here); the learning rates are frozen in
# the demo configs. reproduce-demo: the development block (split seeds 0-19).
verdict: $(STAMP)
	$(BIN)/python examples/verdict.py --block held-out

reproduce-demo: $(STAMP)
	$(BIN)/python examples/verdict.py --block development

# The example notebooks, executed in quick mode, as .ipynb files beside their sources.
notebooks: $(STAMP)
	$(BIN)/python examples/execute_notebooks.py

# The documentation site into site/: the task figures from the phantoms, then a strict build
# (broken links, anchors and docstring references are errors).
docs: $(STAMP)
	$(BIN)/python docs/make_figures.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/tasks.py
	$(BIN)/python benchmarks/crop_shortcut.py
	$(BIN)/python benchmarks/exemplar.py
	$(BIN)/python benchmarks/cpc.py
	$(BIN)/python benchmarks/backbones.py
	$(BIN)/python benchmarks/pretrain.py
	$(BIN)/python benchmarks/multiscale.py
	$(BIN)/python benchmarks/phantoms.py
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/pretext_quality.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml requirements-dev.txt
	$(BIN)/python -m pip install --quiet -c requirements-dev.txt -r requirements-dev.txt -e '.[test,docs]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) $(INTEROP) site build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
