# protpeft: `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
DEMO := build/demo

.PHONY: install demo demo-data test test-unit test-integration bench lint clean

# torch first, pinned, so pip takes the local CPU wheel instead of pulling GBs of CUDA wheels.
# DeepSpeed installs pure-Python (DS_BUILD_OPS=0) and JIT-builds the few ops it needs on first use.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

$(DEMO)/tiny-esm2/config.json: | install
	protpeft model init-tiny $(DEMO)/tiny-esm2

$(DEMO)/ppi/pairs.tsv: | install
	protpeft data synth --task ppi --out $(DEMO)/ppi

$(DEMO)/symmetry/symmetry.tsv: | install
	protpeft data synth --task symmetry --out $(DEMO)/symmetry

demo-data: $(DEMO)/tiny-esm2/config.json $(DEMO)/ppi/pairs.tsv $(DEMO)/symmetry/symmetry.tsv

demo: install demo-data
	protpeft data check --pairs $(DEMO)/ppi/pairs.tsv --sequences $(DEMO)/ppi/sequences.fasta
	for mode in frozen lora full; do protpeft train configs/demo/ppi_$$mode.yaml --local || exit 1; done

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m unit

test-integration: install
	$(PY) -m pytest -q -m integration

bench: install demo-data
	$(PY) benchmarks/bench_bucketing.py
	$(PY) benchmarks/bench_embedding_cache.py

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf build runs mlruns mlartifacts mlflow.db benchmarks/results
