# kvstore: install what is missing, run a local cluster, run the tests.
#   make up | down | status    a whole cluster on this machine (kvstore-admin local ...)
#   make test                  the whole test suite (what .ci/run runs)
#   make lint                  ruff and mypy (CI runs it before the tests)
# System packages are installed with apt-get only when missing (so no root is needed on a
# machine that has them); the virtualenv is (re)installed when missing or when pyproject.toml,
# setup.py or a compiled module's source (.pyx/.pxd) is newer than its stamp file: the install
# builds the compiled modules in place, which needs a C compiler and the Python headers.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ADMIN := $(VENV)/bin/kvstore-admin
STAMP := $(VENV)/.installed
LOCAL_DIR ?= .kvstore-local
PYTEST_ARGS ?=
# make test runs the suite in this many processes (pytest-xdist), a test file to each at a time
# (its module fixtures shared): the tests mostly wait on servers they started, so 3 fit 2 cores.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3

.PHONY: help up down status test lint system-packages

help:
	@echo "make up       install what is missing, start a local cluster in $(LOCAL_DIR)/"
	@echo "make down     stop exactly what 'make up' started"
	@echo "make status   the local processes and the cluster's status"
	@echo "make test     install what is missing, run the whole test suite"
	@echo "make lint     ruff and mypy"

system-packages:
	@missing=""; \
	command -v $(PYTHON) >/dev/null || missing="$$missing python3"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v cc >/dev/null || command -v gcc >/dev/null || missing="$$missing gcc"; \
	$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
		2>/dev/null || missing="$$missing python3-dev"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	test -f /usr/share/java/zookeeper.jar || missing="$$missing zookeeper"; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
		$$sudo apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$missing; \
	fi

COMPILED := $(wildcard kvstore_proxy/*.pyx kvstore_proxy/*.pxd kvstore_cluster/*.pyx kvstore_cluster/*.pxd)

$(STAMP): pyproject.toml setup.py $(COMPILED) | system-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

up: $(STAMP)
	$(ADMIN) local up --dir $(LOCAL_DIR)

down:
	@if [ -x $(ADMIN) ]; then $(ADMIN) local down --dir $(LOCAL_DIR); \
	else echo "kvstore is not installed ($(ADMIN) is missing); nothing to stop"; fi

status:
	@test -x $(ADMIN) || { echo "kvstore is not installed; run 'make up'"; exit 1; }
	$(ADMIN) local status --dir $(LOCAL_DIR)
	@echo
	$(ADMIN) --zk "$$($(PY) -c 'import json, sys; print(json.load(open(sys.argv[1]))["zk"])' \
		$(LOCAL_DIR)/state.json)" status

# What only the tests need, installed like redis-server when missing: headless Chromium for the
# status page's test (tests/observe/test_web.py) and promtool (Debian's prometheus package) for
# the alert rules. Without recommends: no Prometheus node exporter or desktop extras.
.PHONY: test-packages
test-packages:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing test packages:$$missing"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
		$$sudo apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The linters first (ruff, mypy), then the whole suite. pytest exits 5 when it collected no test;
# like every non-zero exit it fails this target.
test: $(STAMP) test-packages lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# make bench: direct Redis vs nutcracker vs kvstore-proxy, about 7 minutes (bench/README.md).
# BENCH_ARGS=--quick for a one-minute smoke run. Installs nutcracker, redis-benchmark and the
# bench extra (matplotlib, psutil) only when missing.
BENCH_ARGS ?=

.PHONY: bench
bench: $(STAMP)
	@missing=""; \
	command -v nutcracker >/dev/null || missing="$$missing nutcracker"; \
	command -v redis-benchmark >/dev/null || missing="$$missing redis-tools"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
		$$sudo apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$missing; \
	fi
	@$(PY) -c 'import matplotlib, psutil' 2>/dev/null || $(PY) -m pip install -q -e '.[test,bench]'
	$(PY) bench/run.py $(BENCH_ARGS)

# make bench-metrics: kvstore-proxy with and without --metrics-listen (scraped every second) and an identical control proxy, same
# run, interleaved (bench/metrics_cost.py), a few minutes; BENCH_ARGS=--quick for a short run.
.PHONY: bench-metrics
bench-metrics: $(STAMP)
	@command -v redis-benchmark >/dev/null || { sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
		$$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q redis-tools; }
	@$(PY) -c 'import psutil' 2>/dev/null || $(PY) -m pip install -q -e '.[test,bench]'
	$(PY) bench/metrics_cost.py $(BENCH_ARGS)

# make chaos: the reliability suite (tests/chaos, docs/contracts.md) sharing CHAOS_SECONDS among its
# faults, 20 minutes by default; plain `make test` runs the same suite CI-sized (a few minutes).
CHAOS_SECONDS ?= 1200

.PHONY: chaos
chaos: $(STAMP)
	KVSTORE_CHAOS_SECONDS=$(CHAOS_SECONDS) $(VENV)/bin/pytest tests/chaos -s $(PYTEST_ARGS)

# make import-bench: kvstore-admin import of a 1,000,000-key source with a writer at 5,000 writes/s
# (tools/import_bench.py; README "Moving in"), a few minutes; IMPORT_BENCH_ARGS="--keys N ..." to vary.
.PHONY: import-bench
import-bench: $(STAMP)
	$(PY) tools/import_bench.py $(IMPORT_BENCH_ARGS)

# make bench-reshard: kvstore-admin rebalance of 600,000 keys onto a third group timed from start to
# exit, clients' ops/s and p99 through the proxy during vs before, the longest stall of a server while
# a 1,000,000-field hash moves (tools/reshard_bench.py; README "Resharding while serving"), a few minutes.
# Writes bench/results/reshard.json; RESHARD_BENCH_ARGS="--keys N --rounds N ... -- --batch N" to vary.
RESHARD_BENCH_ARGS ?=

.PHONY: bench-reshard
bench-reshard: $(STAMP)
	$(PY) tools/reshard_bench.py $(RESHARD_BENCH_ARGS)

# make deploy-test: the Ansible deployment (ansible/, docs/deploy.md) for real on this machine:
# site.yml twice (the second run must change nothing), the rolling playbooks, teardown.yml, and
# ansible-lint's production profile; about 3 minutes; then a deployment with every security setting on
# (docs/security.md), another 3 minutes, which plain `make test` skips. ansible-core and ansible-lint come with the
# test extra (also the deploy extra: pip install -e '.[deploy]').
.PHONY: deploy-test
deploy-test: $(STAMP)
	KVSTORE_DEPLOY_SECURITY=1 $(VENV)/bin/pytest tests/deploy -s -rs $(PYTEST_ARGS)
