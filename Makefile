# Laiwang: the two commands a newcomer needs are `make run` and `make test`.
# Everything else (virtualenv, packages, buf, generated code) is set up on the way.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
BUF     := node_modules/.bin/buf
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help run demo sample test install proto web web-test check-proto lint format bench bench-contacts bench-chat bench-auth \
	bench-zhadui bench-push clean-data image

# `make help` prints every target that has a `## ` description (tests/unit/test_readme_commands.py checks that all do).
help: ## this list
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"

# Re-install only when the dependency list changes. `make run` and `make demo` need only the runtime
# packages and the protobuf generator (.installed-run); the test, lint and deployment-check tools, over
# half of the download, come with the first `make test` or `make install` (.installed).
$(VENV)/.installed-run: pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[proto]'
	touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(BUF): package.json package-lock.json
	npm ci --prefer-offline --no-audit --no-fund --loglevel=error
	touch $@

# The web client: rebuilt only when its sources, the OpenAPI document or the npm lock changed.
WEB_SOURCES := $(shell find web/src -type f 2>/dev/null) web/index.html web/vite.config.ts web/tsconfig.json \
	gateway/openapi.json package-lock.json

web/dist/index.html: $(WEB_SOURCES) | $(BUF)
	npm run --silent web:build
	@touch $@

web: web/dist/index.html ## build the web client into web/dist (the gateway serves it at /)

web-test: $(BUF) ## Vitest unit tests of the web client's own logic
	npm run --silent web:test

install: $(VENV)/.installed $(BUF) ## .venv (pinned packages) and node_modules (buf); the other targets do it when needed

proto: $(VENV)/.installed-run $(BUF) ## regenerate gen/ from protos/
	$(PY) scripts/gen_protos.py

# Generated code must match protos/, lint must pass, and nothing may break main's contract.
check-proto: install ## generated code current, buf lint, buf breaking against main
	$(PY) scripts/gen_protos.py --check
	cd protos && ../$(BUF) lint
	@if git rev-parse --verify --quiet main >/dev/null && git cat-file -e main:protos/buf.yaml 2>/dev/null; then \
		$(BUF) breaking protos --against '.git#branch=main,subdir=protos' && echo "buf breaking: no breaking changes against main"; \
	else echo "buf breaking: main has no protos yet; nothing to compare"; fi

lint: install ## ruff check, ruff format --check and mypy (settings in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install ## ruff --fix and ruff format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: check-proto lint web web-test ## lint, contract checks and every test (unit, integration, e2e, browser)
	$(PY) -m pytest

run: proto web ## the whole stack (embedded NATS + Mongo-wire store), ready for a Matrix client
	$(VENV)/bin/laiwang run

# The sample partner app (apps/sample) against a running stack started with
# OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS=true (its webhooks go to this loopback process).
sample: $(VENV)/.installed-run ## the sample partner app "Hotpot Finder" on :8090 (docs/open_platform.md)
	$(PY) -m apps.sample

# Against the stack `make run` started (same GATEWAY_PORT and LAIWANG_DATA_DIR); safe to repeat.
demo: $(VENV)/.installed-run ## demo users (friends, a chat, a zhadui) on the running stack; prints their passwords
	$(VENV)/bin/laiwang demo

# Not part of make test (slow); IMAGE=... names it, `scripts/build_image.sh --debootstrap` needs no registry.
image: install ## the container image every process runs from (podman or docker; Dockerfile)
	scripts/build_image.sh

bench: install ## list the benchmarks (bench/README.md)
	$(PY) -m bench

# 2,000-number address book against 1,000,000 registered numbers (seeded data cached in var/bench-contacts).
bench-contacts: install ## address-book matching against 1,000,000 numbers
	$(PY) -m bench.contacts_bench

# Same chat workload against Laiwang and Synapse (pip-installed into var/bench/synapse-venv), then
# 5,000 idle /sync long-polls on one gateway.
bench-chat: install ## chat throughput and latency, Laiwang vs Synapse; 5,000 idle long-polls
	$(PY) -m bench.chat_bench

# Feed latency with 10,000 users and 100,000 zhaduis; fan-out to a user's 500 friends.
bench-zhadui: install ## zhadui feeds with 10,000 users and 100,000 zhaduis
	$(PY) -m bench.zhadui_bench

# Login throughput (argon2id) and the authenticated-request overhead at the gateway (cached introspection).
bench-auth: install ## login throughput and the authenticated-request overhead
	$(PY) -m bench.auth_bench

bench-push: install ## message-to-push latency at 200 msg/s to 1,000 users, and pokes per 50-message burst
	$(PY) -m bench.push_bench

clean-data: ## delete var/ (the data of make run and the benchmarks' caches)
	rm -rf var
