# ckms entry points. Each target is thin: it calls one script or tool.
# Everything a fresh machine needs is installed by these targets and cached when present.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CACHE ?= $(HOME)/.cache/ckms
export CKMS_TOOL_CACHE := $(CACHE)
BIN := $(VENV)/bin
# LAB_CA=vm: the lab whose CA host is a QEMU VM with Secure Boot (stack labvm, report in build/report-labvm).
ifeq ($(LAB_CA),vm)
export CKMS_LAB_STACK ?= labvm
export REPORT_OUT ?= $(CURDIR)/build/report-labvm
endif

.PHONY: help deps tools lint test test-unit bench bench-single bench-peer soak lab lab-up lab-down lab-status clean wheelhouse converge report

help:
	@echo "make test      install what is missing, lint (make lint), then run the whole suite"
	@echo "make bench     issuance benchmark against real daemons (SoftHSM, durable storage): SQLite and"
	@echo "               PostgreSQL, 1 and 2 CA nodes; make bench-single: SQLite, one node only"
	@echo "make bench-peer  the same load against ckms, then step-ca (pinned, built once; key in SoftHSM):"
	@echo "               certs/s, p50/p99 of each and the ratio ckms/step-ca (not part of make test)"
	@echo "make soak      mixed load (enrol, re-enrol, revoke, CRL, bad requests) at 200/s for 10 min:"
	@echo "               errors, p99, daemon RSS and descriptors at start and end (SOAK_DURATION, SOAK_RATE)"
	@echo "make lab       (see README) bring up the throwaway lab environment"
	@echo "make lab LAB_CA=vm  the same lab with its CA host as a QEMU VM (Secure Boot, own kernel:"
	@echo "               auditd, AppArmor, sysctls, secure boot observed for real); docs/lab-vm.md"
	@echo "make drill-rollover  the CA key rollover drill again on that lab (one more key generation)"

# Debian packages + the project venv with pinned dependencies; re-runs only when inputs change.
$(VENV)/.deps-stamp: pyproject.toml scripts/bootstrap-host.sh scripts/bootstrap-venv.sh
	scripts/bootstrap-host.sh
	PYTHON=$(PYTHON) scripts/bootstrap-venv.sh $(VENV)
	touch $@

deps: $(VENV)/.deps-stamp

# Native helper tools built from pinned Go modules into the per-machine cache.
tools: deps
	scripts/build-ckms-lint.sh

# Lint and types: ruff (check + format) and mypy --strict over ckms_app; yamllint and ansible-lint
# (production profile) over roles and playbooks. Part of make test.
lint: deps
	scripts/lint-python.sh
	scripts/lint-ansible.sh

# The suite in two streams side by side (scripts/run-tests.sh says why); CKMS_TEST_SERIAL=1: one pytest.
test: deps tools lint
	scripts/run-tests.sh

test-unit: deps tools
	$(BIN)/pytest -q tests/unit

# Long fuzz run of the parsers a hostile client reaches (CSR checks, EST bodies, JSON API, ckms.toml) and
# of the running daemon: the same property tests as in make test, with ~25-50 times the examples from
# random seeds (CKMS_FUZZ=1, see tests/fuzz/profiles.py); failing examples are kept in build/hypothesis.
.PHONY: fuzz
fuzz: deps tools
	CKMS_FUZZ=1 $(BIN)/pytest -q tests/fuzz tests/integration/test_fuzz_daemon.py

bench: deps tools
	$(BIN)/python -m ckms_lab.bench --matrix

bench-single: deps tools
	$(BIN)/python -m ckms_lab.bench

# Peer baseline (issue 15): the bench-single load against step-ca built from its pinned Go module (cached).
bench-peer: deps tools
	scripts/build-step-ca.sh >/dev/null
	$(BIN)/python -m ckms_lab.bench_peer

SOAK_DURATION ?= 600
SOAK_RATE ?= 200
soak: deps tools
	$(BIN)/python -m ckms_lab.soak --duration $(SOAK_DURATION) --rate $(SOAK_RATE)

# Throwaway lab: pinned Pulumi CLI built from Go modules and a golden image, both cached per machine.
.PHONY: pulumi-cli
pulumi-cli: deps
	scripts/build-pulumi.sh $(VENV) >/dev/null

lab-up: deps
	scripts/lab-up.sh

# The whole lab: hosts up, converge (site.yml: harden + CA + backups), verify from the terminal and the
# rogue host, a first backup, the hardening report; prints where the report is and how to enrol.
lab: deps tools
	scripts/lab-up.sh
	scripts/lab-converge.sh --all

# Offline wheelhouse the CA hosts install the daemon from (build/wheelhouse; cached).
wheelhouse: deps
	scripts/build-wheelhouse.sh

# CA key rollover drill again on the running lab (issue 14, docs/drills.md; make lab runs it once, last):
# a new key under 2-of-3 custody, devices of the old and the new key checked at the IoT hub throughout.
# One more key generation each run; its records join build/report/drills.json (make report shows them).
.PHONY: drill-rollover
drill-rollover: deps
	ANSIBLE_CONFIG=$(CURDIR)/ansible.cfg PATH=$(CURDIR)/$(BIN):$$PATH \
	  $(BIN)/python tests/lab/drills/rollover.py --inventory inventories/$${CKMS_LAB_STACK:-lab}/generated/hosts.yml

# The roles as the Ansible collection ckms.ca (build/collection/ckms-ca-<version>.tar.gz; cached).
.PHONY: collection
collection: deps
	scripts/build-collection.sh

# Ansible against the running lab: PLAYBOOK=site.yml (default) | deploy_ca.yml | backup.yml | restore.yml ...
converge: deps tools
	scripts/lab-converge.sh $(or $(PLAYBOOK),site.yml)

# Hardening checks over SSH + the per-item report (build/report; LANG_REPORT=ja|en, CKMS_INVENTORY=...).
report: deps
	scripts/report.sh

# Extended breakage run against the live lab (not part of make test): each A/E item's break must fail
# exactly its checks, naming the item, then be restored (build/report/breakage; BREAK_ITEMS=A.05,E.09).
.PHONY: breakage
breakage: deps
	ANSIBLE_CONFIG=$(CURDIR)/ansible.cfg ANSIBLE_VAULT_PASSWORD_FILE=$(CACHE)/ansible/vault-pass PATH=$(CURDIR)/$(BIN):$$PATH \
	  $(BIN)/python -m hardening.breakage.run $(if $(BREAK_ITEMS),--items $(BREAK_ITEMS)) \
	  --inventory inventories/$${CKMS_LAB_STACK:-lab}/generated/hosts.yml

# Public baseline: OpenSCAP, ANSSI BP-028 high (Debian 12 content, cached), against the stack's CA hosts,
# read-only from the controller; ARF, HTML and a JSON summary per host in build/report[-<stack>]/openscap.
.PHONY: baseline
baseline: deps
	scripts/openscap-eval.sh
	ANSIBLE_CONFIG=$(CURDIR)/ansible.cfg ANSIBLE_VAULT_PASSWORD_FILE=$(CACHE)/ansible/vault-pass \
	  $(BIN)/pytest -q -p no:cacheprovider hardening/checks/baseline_check.py --rootdir hardening/checks \
	  --ansible-inventory inventories/$${CKMS_LAB_STACK:-lab}/generated/hosts.yml

lab-down: deps
	scripts/lab-down.sh

lab-status: deps
	scripts/lab-status.sh

clean:
	rm -rf $(VENV) .pytest_cache
