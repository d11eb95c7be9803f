# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3
# the platform the lock files resolve for: the Dockerfile's base image and this project's machines
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --quiet \
	--find-links /opt/wheels

.PHONY: install lock demo test bench bench-recall export cluster protos clean

# installs come from the lock files in requirements/ (exact versions and hashes; `make lock` rewrites them)
$(STAMP): pyproject.toml requirements/dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH, or run: make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==$(PIP_VERSION)
	$(PY) -m pip install -q --require-hashes -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# rewrite the lock files from pyproject.toml's ranges (then commit requirements/); torch is the CPU build
# (+cpu: a local wheel in /opt/wheels here, download.pytorch.org/whl/cpu elsewhere, as the Dockerfile does)
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) -o requirements/serving.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra export $(LOCK_FLAGS) -o requirements/export.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements/dev.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra bench $(LOCK_FLAGS) -o requirements/bench.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra kuberay $(LOCK_FLAGS) -o requirements/kuberay.txt

demo: install
	$(PY) -m tools.demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m pip install -q --require-hashes -r requirements/bench.txt
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
