# Two set-up commands (see README): `make run` and `make test`. Everything else is a helper they call.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml collector/_flatten.c analytics/_critical_path.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## make run: the collector + API on ./hopscope.duckdb, fed by a simulated Bookinfo mesh; prints where to look
run: $(STAMP)
	$(BIN)/hopscope demo

## make test: the whole suite (unit, real OTLP exporters, crash rounds, the real Envoy mesh, the browser)
test: $(STAMP)
	./scripts/system-packages.sh
	$(BIN)/ruff check cli collector analytics instrumentation tests bench
	MYPY=$(CURDIR)/$(BIN)/mypy ./scripts/typecheck.sh
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/end_to_end.py

clean:
	rm -rf $(VENV) build *.egg-info
