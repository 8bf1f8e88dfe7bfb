# Two entry points for a fresh checkout: `make run` (embedded default) and `make test`.
# Both are idempotent: the venv is built once and re-synced only when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install

.PHONY: install protos agents aider run test bench clean

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

# The real coding-agent CLIs the tests drive (tests/agents), pinned, from the npm registry, into
# an ignored folder. Their binaries come inside registry packages: nothing else is downloaded.
AGENTS_DIR := .agents
AGENTS_STAMP := $(AGENTS_DIR)/.stamp-install
AGENT_PACKAGES := @anthropic-ai/claude-code@2.1.197 @openai/codex@0.171.0
$(AGENTS_STAMP): Makefile
	@command -v npm >/dev/null || { echo "npm missing: apt-get install -y nodejs npm"; exit 1; }
	mkdir -p $(AGENTS_DIR)
	npm install --prefix $(AGENTS_DIR) --no-audit --no-fund --loglevel=error $(AGENT_PACKAGES)
	touch $(AGENTS_STAMP)

agents: $(AGENTS_STAMP)

# Aider (tests/agents/test_aider.py) from PyPI, pinned, in a virtual environment of its own:
# aider-chat pins dozens of packages (litellm, openai, tokenizers, ...) that must not move the
# project's .venv. About 30 s with a warm pip cache.
AIDER_VENV := .aider-venv
AIDER_STAMP := $(AIDER_VENV)/.stamp-install
AIDER_VERSION := 0.86.2
$(AIDER_STAMP): Makefile
	$(PYTHON) -m venv $(AIDER_VENV)
	$(AIDER_VENV)/bin/python -m pip install -q aider-chat==$(AIDER_VERSION)
	touch $(AIDER_STAMP)

aider: $(AIDER_STAMP)

protos: $(STAMP)
	PYTHON=$(PY) ./scripts/gen-protos.sh

run: install
	$(VENV)/bin/reflex serve

test: install agents aider
	@command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server"; exit 1; }
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) .data $(AGENTS_DIR) $(AIDER_VENV)
