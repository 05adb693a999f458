# Laiwang: the two commands a newcomer needs are `make run` and `make test`.
# Everything else (virtualenv, packages, buf, generated code) is set up on the way.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
BUF     := node_modules/.bin/buf
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test install proto check-proto lint format bench bench-contacts bench-chat bench-auth bench-zhadui clean-data help

help:
	@echo "make run     - the whole stack (embedded NATS + Mongo-wire store), ready for a Matrix client"
	@echo "make test    - lint, contract checks and every test (unit, integration, e2e)"
	@echo "make proto   - regenerate Python code from protos/"
	@echo "make bench   - benchmarks (see bench/README.md)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"

# Re-install only when the dependency list changes.
$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed $(BUF)

proto: install
	$(PY) scripts/gen_protos.py

# Generated code must match protos/, lint must pass, and nothing may break main's contract.
check-proto: install
	$(PY) scripts/gen_protos.py --check
	cd protos && ../$(BUF) lint
	@if git rev-parse --verify --quiet main >/dev/null && git cat-file -e main:protos/buf.yaml 2>/dev/null; then \
		$(BUF) breaking protos --against '.git#branch=main,subdir=protos' && echo "buf breaking: no breaking changes against main"; \
	else echo "buf breaking: main has no protos yet; nothing to compare"; fi

lint: install
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: check-proto lint
	$(PY) -m pytest

run: proto
	$(VENV)/bin/laiwang run

bench: install
	$(PY) -m bench

# 2,000-number address book against 1,000,000 registered numbers (seeded data cached in var/bench-contacts).
bench-contacts: install
	$(PY) -m bench.contacts_bench

# Same chat workload against Laiwang and Synapse (pip-installed into var/bench/synapse-venv), then
# 5,000 idle /sync long-polls on one gateway.
bench-chat: install
	$(PY) -m bench.chat_bench

# Feed latency with 10,000 users and 100,000 zhaduis; fan-out to a user's 500 friends.
bench-zhadui: install
	$(PY) -m bench.zhadui_bench

# Login throughput (argon2id) and the authenticated-request overhead at the gateway (cached introspection).
bench-auth: install
	$(PY) -m bench.auth_bench

clean-data:
	rm -rf var
