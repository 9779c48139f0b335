# Two commands on a fresh Debian machine: `make demo` runs the main job, `make test` the tests.
# Each installs what is missing (Debian packages, the virtualenv with pinned dependencies),
# and does nothing more when everything is already there.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# what to look for (a command, or a path glob) : the Debian package that provides it
APT_CHECKS := mosquitto:mosquitto mosquitto_pub:mosquitto-clients influxd:influxdb influx:influxdb-client \
	docker-compose:docker-compose wrk:wrk chromium:chromium \
	/usr/lib/postgresql/*/bin/postgres:postgresql /usr/share/fonts/opentype/noto/NotoSansCJK-*.ttc:fonts-noto-cjk
STAMP := $(VENV)/.installed

.PHONY: all deps apt venv node demo up test lint fmt lock bench clean

all: deps

deps: apt venv node

# Debian packages: installed only when a binary is missing; their system services are not needed
# (the launcher starts its own on free ports), so they are stopped if the package started them.
apt:
	@missing=""; \
	for b in $(APT_CHECKS); do \
	  what=$${b%%:*}; \
	  if [[ $$what == /* ]]; then compgen -G "$$what" >/dev/null || missing="$$missing $${b##*:}"; \
	  else PATH="$$PATH:/usr/sbin" command -v $$what >/dev/null || missing="$$missing $${b##*:}"; fi; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null && \
	  ( $(SUDO) service mosquitto stop; $(SUDO) service influxdb stop; $(SUDO) service postgresql stop ) >/dev/null 2>&1 || true; \
	fi

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

# Node tooling of the ledger (package.json: anvil devnet, solc-js, OpenZeppelin): `npm ci` only when
# node_modules is missing or package.json/package-lock.json changed; the contract is compiled only
# when its source is newer than the artifact (ledger/build, not committed).
NODE_STAMP := node_modules/.installed
CONTRACT_ARTIFACT := ledger/build/TraceAnchor.json

node: $(NODE_STAMP) $(CONTRACT_ARTIFACT)

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "installing Debian packages: nodejs npm"; $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	npm ci --silent
	@touch $(NODE_STAMP)

$(CONTRACT_ARTIFACT): ledger/contracts/TraceAnchor.sol ledger/contracts/solc.mjs ledger/solc.py $(NODE_STAMP) | venv
	$(BIN)/python -m ledger.solc TraceAnchor
	@touch $(CONTRACT_ARTIFACT)

demo: deps
	$(BIN)/village demo

up: deps
	$(BIN)/village up

# The tests run in TEST_WORKERS processes (pytest-xdist), a test file to a process (its module fixtures
# built once), the longest files first (tests/conftest.py); most tests wait on their services, so 3
# processes keep 2 cores busy. Each process starts its own services on ports of its own.
TEST_WORKERS ?= 3

test: deps
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: deps
	$(BIN)/village bench ingest

# Re-pin: install the direct dependencies of pyproject.toml fresh and write requirements.txt.
lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock && .venv-lock/bin/pip install -q -e '.[dev]' && \
	( echo "# Exact versions installed by 'make' (pip install -r requirements.txt). Regenerate with 'make lock'."; \
	  .venv-lock/bin/pip freeze --exclude-editable ) > requirements.txt && rm -rf .venv-lock

clean:
	rm -rf var .pytest_cache .ruff_cache
