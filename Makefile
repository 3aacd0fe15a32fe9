# Developer entry points. `make test` is what CI runs (via README's test command).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install lint typecheck test bench demo

$(PY):
	python3 -m venv $(VENV)

install: $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(PY) tools/typecheck_tree.py >/dev/null
	$(VENV)/bin/mypy

test: install
	$(VENV)/bin/pytest -q

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/emulator.py
	$(PY) bench/worker_bench.py

demo: install
	$(VENV)/bin/changestream-worker demo
