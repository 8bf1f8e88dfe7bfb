# Two entry points for a fresh checkout: `make run` (embedded default) and `make test`.
# Both are idempotent: the venv is built once and re-synced only when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install

.PHONY: install protos run test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first and pinned: `torch==2.13.0` is the CPU build served from local disk; a bare
# `torch` requirement would pull multi-GB CUDA wheels.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP) protos

protos: $(STAMP)
	PYTHON=$(PY) ./scripts/gen-protos.sh

run: install
	$(VENV)/bin/reflex serve

test: install
	@command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server"; exit 1; }
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) .data
