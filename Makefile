# tickmesh: `make run` (offline mesh on built-in data) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
MARKET_HOURS ?= 24

.PHONY: run test test-fast bench bench-quick fake up status down clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	touch $@

## backtest the whole mesh offline (one thread, inproc, 24 market hours of synthetic data), a summary and report.html
run: $(VENV)/.installed
	$(PY) -m nodes.offline --market-hours $(MARKET_HOURS)

## the whole suite (unit, integration, e2e under supervisord); the long fuzz tier is `-m long`
test: $(VENV)/.installed-test
	$(PY) -m pytest

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -m "not e2e"

bench: $(VENV)/.installed
	$(PY) -m tools.bench all --json bench-report.json

bench-quick: $(VENV)/.installed
	$(PY) -m tools.bench all --quick --json bench-report.json

## the local fake Coinbase exchange (WebSocket + REST) on 127.0.0.1
fake: $(VENV)/.installed
	$(PY) -m tools.fakecoinbase

## supervisord: start the mesh, show it, stop it (SUPERVISOR_CONF: another copy of the file, e.g. tests)
SUPERVISOR_CONF ?= supervisord.conf
SUPERVISOR_VAR = $(dir $(abspath $(SUPERVISOR_CONF)))var
TICKMESH_PYTHON ?= $(abspath $(PY))
export TICKMESH_PYTHON
## `make up` refuses to start on a config error (tickmesh config check: one line naming the key)
up: $(VENV)/.installed
	@$(PY) -m tools.config check --quiet || { echo "make up: not started: fix the config first" >&2; exit 2; }
	mkdir -p $(SUPERVISOR_VAR)/log
	$(VENV)/bin/supervisord -c $(SUPERVISOR_CONF)
status: $(VENV)/.installed
	$(VENV)/bin/supervisorctl -c $(SUPERVISOR_CONF) status
down: $(VENV)/.installed
	@pid=$$(cat $(SUPERVISOR_VAR)/supervisord.pid 2>/dev/null); \
	$(VENV)/bin/supervisorctl -c $(SUPERVISOR_CONF) shutdown; \
	[ -n "$$pid" ] || exit 0; for i in $$(seq 1 200); do \
	  case "$$(ps -o stat= -p $$pid 2>/dev/null)" in ""|Z*) exit 0;; esac; sleep 0.1; \
	done; echo "supervisord (pid $$pid) still running after 20 s"; exit 1

clean:
	rm -rf $(VENV) *.egg-info build var
