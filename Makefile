# litellm-credits developer entry points. GNU make; every target bootstraps what it needs.
#
#   make install     .venv + package + test deps (+ PostgreSQL, PgBouncer, chromium, node via apt when root)
#   make test        pytest (starts/stops its own throwaway PostgreSQL); PYTEST_ARGS=...
#   make lint        ruff
#   make typecheck   mypy --strict on the package
#   make check       lint + typecheck + test
#   make migrate     apply migrations  } to $CREDITS_DATABASE_URL, else $DATABASE_URL,
#   make verify      check the ledger  } else the dev cluster .run/pg-dev (port 55433),
#   make run         start the proxy   } db "credits", started on demand
#   make demo | bench
#   make dev-db      start the dev cluster and print its URL; dev-db-stop stops it
#   make clean       stop and delete every cluster under .run, remove .run

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# Never fetch the model cost map from the internet at import time.
export LITELLM_LOCAL_MODEL_COST_MAP := True

PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

DEV_PG_DIR  := .run/pg-dev
DEV_PG_PORT := 55433
DEV_DB      := credits
PROXY_PORT  ?= 4000
LITELLM_CONFIG ?= litellm_config.yaml

# The one place that decides which database the dev targets use (see
# `python -m devtools.pg --help`): an explicit URL wins, else the dev cluster.
DB_URL_CMD := $(PY) -m devtools.pg database-url --dir $(DEV_PG_DIR) --port $(DEV_PG_PORT) --db $(DEV_DB)

.PHONY: help install postgres pgbouncer browser node test lint typecheck check migrate verify run demo bench \
        dev-db dev-db-stop clean

help:
	@sed -n '1,15s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

install: $(STAMP) postgres pgbouncer browser node

# Re-runs only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt
	@if [ ! -x $(PY) ]; then \
	  if [ -z "$(PYTHON_BOOT)" ]; then echo "error: python3.11 (or python3) not found" >&2; exit 1; fi; \
	  echo "creating $(VENV) with $(PYTHON_BOOT)"; \
	  $(PYTHON_BOOT) -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	@touch $@

# PostgreSQL server binaries are needed by the test harness and the dev cluster.
# Debian's postgresql package would also create and start a cluster on 5432; as
# the official postgres Docker image does, install postgresql-common first and
# switch that off before installing the server.
PG_INITDB_GLOB ?= /usr/lib/postgresql/*/bin/initdb
APT_GET := apt-get -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold

postgres:
	@if ls $(PG_INITDB_GLOB) >/dev/null 2>&1 || command -v initdb >/dev/null \
	    || [ -n "$${PG_BINDIR:-}" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing the PostgreSQL server with apt-get"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq; \
	  $(APT_GET) install postgresql-common >/dev/null; \
	  sed -ri 's/^#? *create_main_cluster *=.*/create_main_cluster = false/' \
	    /etc/postgresql-common/createcluster.conf; \
	  $(APT_GET) install postgresql >/dev/null; \
	else \
	  echo "error: PostgreSQL server binaries (initdb, pg_ctl) are missing." >&2; \
	  echo "  Debian/Ubuntu: sudo apt-get install -y postgresql" >&2; \
	  echo "  elsewhere: install PostgreSQL >= 13 and set PG_BINDIR to the directory with initdb" >&2; \
	  exit 1; \
	fi

# Debian's PgBouncer, for the tests that run the plugin and the CLI through a pooler
# (devtools/pgbouncer.py starts its own on a free port). The package would start a
# system pgbouncer on 6432; as for Docker builds, a policy-rc.d that answers 101
# keeps apt from starting any service while it installs. Without root/apt those
# tests skip and say why.
pgbouncer:
	@if command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's pgbouncer for the pooler tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
	    trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
	  fi; \
	  apt-get update -qq; $(APT_GET) install pgbouncer >/dev/null; \
	  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	    systemctl disable --now pgbouncer >/dev/null 2>&1 || true; \
	  fi; \
	else \
	  echo "note: pgbouncer is missing; the pooler tests will be skipped" \
	       "(Debian: sudo apt-get install -y pgbouncer)" >&2; \
	fi

# Debian's Chromium for the credits-page browser test (Playwright drives it; it never
# downloads a browser of its own). Without root/apt the test skips and says why.
browser:
	@if command -v chromium >/dev/null || [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the browser test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq; $(APT_GET) install chromium >/dev/null; \
	else \
	  echo "note: chromium is missing; the browser test will be skipped" \
	       "(Debian: sudo apt-get install -y chromium)" >&2; \
	fi

# node + npm for ../shared/tools/litellm-db (LiteLLM's own database in the e2e tests, offline).
# Without them (or without ../shared) those tests are skipped and say why.
node:
	@if command -v node >/dev/null && command -v npm >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's nodejs and npm for the LiteLLM-database tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq; $(APT_GET) install nodejs npm >/dev/null; \
	else \
	  echo "note: node/npm are missing; the LiteLLM-database tests will be skipped" \
	       "(Debian: sudo apt-get install -y nodejs npm)" >&2; \
	fi

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check litellm_credits tests devtools

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict litellm_credits

check: lint typecheck test

migrate: install
	@url="$$($(DB_URL_CMD))"; \
	CREDITS_DATABASE_URL="$$url" $(VENV)/bin/litellm-credits migrate

verify: install
	@url="$$($(DB_URL_CMD))"; \
	CREDITS_DATABASE_URL="$$url" $(VENV)/bin/litellm-credits verify

run: install
	@url="$$($(DB_URL_CMD))"; \
	CREDITS_DATABASE_URL="$$url" LITELLM_CONFIG=$(LITELLM_CONFIG) PROXY_PORT=$(PROXY_PORT) \
	  exec $(PY) -m devtools.serve

demo: install
	$(PY) -m devtools.demo

# wrk (Debian) is the load generator of the proxy benchmark.
bench: install
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing wrk for the benchmark"; export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq; $(APT_GET) install wrk >/dev/null; \
	  else echo "error: wrk is missing (Debian: sudo apt-get install -y wrk)" >&2; exit 1; fi; }
	$(PY) -m bench.run $(BENCH_ARGS)

dev-db: install
	@$(PY) -m devtools.pg start --dir $(DEV_PG_DIR) --port $(DEV_PG_PORT) --db $(DEV_DB)

dev-db-stop:
	@$(CLEAN_PY) -m devtools.pg stop --dir $(DEV_PG_DIR)

# clean must work before `make install` too; stopping clusters needs no psycopg.
CLEAN_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON_BOOT))

clean:
	@for d in .run/pg-*; do \
	  if [ -e "$$d" ]; then \
	    echo "destroying $$d"; $(CLEAN_PY) -m devtools.pg destroy --dir "$$d"; \
	  fi; \
	done
	rm -rf .run
