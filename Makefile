# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench bench-recall export cluster protos clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH, or run: make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m tools.demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m benches.latency

# issue 6's scale check: the recall server over gRPC, 1,000 candidates from a 10^6-item synthetic catalogue
bench-recall: install
	$(PY) -m benches.recall_grpc --synthetic 1000000 --requests 1000 --warmup 100

export: install
	$(PY) -m export

cluster: install
	$(PY) -m cluster

protos: install
	$(PY) -m protos.generate

clean:
	rm -rf $(VENV) snapshots runs .pytest_cache
