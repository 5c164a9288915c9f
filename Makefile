# Two commands: `make run` (serve the IdP on http://localhost:5000) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export FLASK_APP := wsgi

.PHONY: run test install install-dev translations interop-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(MAKE) --no-print-directory translations

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(MAKE) --no-print-directory translations

translations:
	$(BIN)/pybabel compile --statistics -d app/translations 2>&1 | tail -n 1

run: install
	$(BIN)/flask db upgrade
	$(BIN)/flask demo seed
	$(BIN)/flask run --host 127.0.0.1 --port 5000

interop-deps:
	cd tests/interop && npm ci --no-audit --no-fund --loglevel=error

test: install-dev interop-deps
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) instance tests/interop/node_modules

.PHONY: bench
bench: install  # needs PostgreSQL, Redis, Node.js and wrk; writes docs/performance.md (see bench/README.md)
	$(BIN)/python bench/run.py
