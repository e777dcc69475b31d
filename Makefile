# ckms entry points. Each target is thin: it calls one script or tool.
# Everything a fresh machine needs is installed by these targets and cached when present.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CACHE ?= $(HOME)/.cache/ckms
export CKMS_TOOL_CACHE := $(CACHE)
BIN := $(VENV)/bin

.PHONY: help deps tools test test-unit bench lab lab-up lab-down lab-status clean

help:
	@echo "make test      install what is missing, then run the whole suite"
	@echo "make bench     issuance benchmark against a running daemon (SoftHSM, durable storage)"
	@echo "make lab       (see README) bring up the throwaway lab environment"

# Debian packages + the project venv with pinned dependencies; re-runs only when inputs change.
$(VENV)/.deps-stamp: pyproject.toml scripts/bootstrap-host.sh scripts/bootstrap-venv.sh
	scripts/bootstrap-host.sh
	PYTHON=$(PYTHON) scripts/bootstrap-venv.sh $(VENV)
	touch $@

deps: $(VENV)/.deps-stamp

# Native helper tools built from pinned Go modules into the per-machine cache.
tools: deps
	scripts/build-ckms-lint.sh

test: deps tools
	$(BIN)/pytest -q tests

test-unit: deps tools
	$(BIN)/pytest -q tests/unit

bench: deps tools
	$(BIN)/python -m ckms_app.bench

# Throwaway lab: pinned Pulumi CLI built from Go modules and a golden image, both cached per machine.
.PHONY: pulumi-cli
pulumi-cli: deps
	scripts/build-pulumi.sh $(VENV) >/dev/null

lab-up: deps
	scripts/lab-up.sh

lab: lab-up

lab-down: deps
	scripts/lab-down.sh

lab-status: deps
	scripts/lab-status.sh

clean:
	rm -rf $(VENV) .pytest_cache
