# protpeft: `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
DEMO := build/demo

.PHONY: install demo demo-data demo-tune cluster-demo test test-unit test-integration bench lint clean

# torch first, pinned, so pip takes the local CPU wheel instead of pulling GBs of CUDA wheels.
# DeepSpeed installs pure-Python (DS_BUILD_OPS=0) and JIT-builds the few ops it needs on first use; the one every
# CPU run needs (its shared-memory collectives, ~1-2 min of compiling) is built here, not in the first training run.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[dev]"
	$(PY) -m protpeft.trainer.deepspeed_ops
	touch $@

install: $(VENV)/.installed

$(DEMO)/tiny-esm2/config.json: | install
	protpeft model init-tiny $(DEMO)/tiny-esm2

$(DEMO)/ppi/pairs.tsv: | install
	protpeft data synth --task ppi --out $(DEMO)/ppi

$(DEMO)/symmetry/symmetry.tsv: | install
	protpeft data synth --task symmetry --out $(DEMO)/symmetry

demo-data: $(DEMO)/tiny-esm2/config.json $(DEMO)/ppi/pairs.tsv $(DEMO)/symmetry/symmetry.tsv

# The three modes side by side on Ray (run-many), the best registered as demo-ppi@champion in the embedded MLflow
# store (./mlflow.db), then pulled by name in a fresh process to predict a few held-out pairs.
demo: install demo-data
	protpeft data check --pairs $(DEMO)/ppi/pairs.tsv --sequences $(DEMO)/ppi/sequences.fasta
	protpeft run-many configs/demo/jobs.yaml --register-as demo-ppi --alias champion
	awk -F'\t' 'NR == 1 || ($$4 == "test" && n[$$3]++ < 3)' $(DEMO)/ppi/pairs.tsv > $(DEMO)/few-pairs.tsv
	protpeft predict demo-ppi@champion --pairs $(DEMO)/few-pairs.tsv --sequences $(DEMO)/ppi/sequences.fasta \
		--out $(DEMO)/few-predictions.tsv
	column -t $(DEMO)/few-predictions.tsv

# A small Ray Tune search (frozen vs LoRA over learning rate and head width, ASHA) on the demo data, the best trial
# registered as demo-tuned, and the robustness report in runs/tune/demo/report/. A rerun starts the search afresh.
demo-tune: install demo-data
	rm -rf runs/tune/demo
	protpeft tune configs/tune/demo.yaml --register-best demo-tuned
	@echo "robustness report: runs/tune/demo/report/report.md (and report.html)"

# A shared-nothing Ray cluster on this machine (S3 server, a head with no CPUs, two worker nodes in mount namespaces
# of their own): started, shown (what each node sees of the driver's files and of S3), stopped. Needs root (unshare).
# By hand: `$(PY) tests/cluster/local_cluster.py up` prints the variables to export; `... down` stops it.
cluster-demo: install
	$(PY) tests/cluster/local_cluster.py demo

# The five slowest tests are listed at the end: the suite should stay under 12 minutes on 2 cores.
test: install
	$(PY) -m pytest -q -n 2 --durations=5

test-unit: install
	$(PY) -m pytest -q -m unit

test-integration: install
	$(PY) -m pytest -q -m integration

bench: install demo-data
	$(PY) -m benchmarks.bench_vs_loop
	$(PY) -m benchmarks.bench_bucketing
	$(PY) -m benchmarks.bench_embedding_cache
	$(PY) -m benchmarks.bench_prefix_cache
	$(PY) -m benchmarks.bench_host_overhead

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf build runs mlruns mlartifacts mlflow.db benchmarks/results
