# protolib: `make book` renders the book, `make test` runs the tests. Both set up .venv first.
#
# PyTorch is installed first, pinned through TORCH_SPEC so that it is never swapped for another
# build by dependency resolution. Override it for your machine, e.g. on a CUDA workstation:
#     make book TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PROTOLIB_CONFIG ?= default
BIN := $(VENV)/bin
STAMP := $(VENV)/.protolib-installed

export PROTOLIB_CONFIG

.PHONY: help venv book lab test lint test-fast bank benchmark clean clean-artifacts

help:
	@echo "make book       set up .venv, run the pipeline notebooks and render the book to _build/html"
	@echo "make lab        set up .venv and open the notebooks in JupyterLab with the project's kernel"
	@echo "make test       set up .venv and run the whole test suite (notebooks included)"
	@echo "make test-fast  the tests without executing the notebooks"
	@echo "make lint       check the code's format and lint with ruff (make test runs it first)"
	@echo "make benchmark  measure simulator, training and matching speed (benchmarks/README.md)"
	@echo "make clean      remove the book build and artifacts (keeps .venv)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[book,test,cluster]"
	@touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . --all --builder html -W --keep-going
	@echo "The book is in _build/html/index.html"

lab: $(STAMP)  # the notebooks' kernel, "Python 3", is then .venv's Python, with protolib installed
	$(BIN)/jupyter lab notebooks/

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)  # ruff: the format (ruff format) and the lint rules in pyproject.toml's [tool.ruff]
	$(BIN)/ruff format --check --quiet . || (echo "Run '$(BIN)/ruff format .' to format the code." && false)
	$(BIN)/ruff check --quiet .

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not notebooks"

benchmark: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/python benchmarks/simulator_throughput.py --out benchmarks/results/simulator.json
	$(BIN)/python benchmarks/training_throughput.py --config default --epochs 2
	$(BIN)/python benchmarks/matching_latency.py --out benchmarks/results/matching.json
	$(BIN)/python benchmarks/faiss_recall.py --out benchmarks/results/faiss_recall.json
	$(BIN)/python benchmarks/scale.py --out benchmarks/results/scale.json

clean:
	rm -rf _build artifacts

clean-artifacts:
	rm -rf artifacts
