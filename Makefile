# Two-command set-up: `make run` and `make test` both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(STAMP_TEST): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[test,hf]"
	touch $(STAMP_TEST)

# The main job on its tiny default.
run: $(STAMP)
	$(PY) -m bench.entropy_memory

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP_TEST)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

bench: $(STAMP_TEST)
	$(PY) -m bench.entropy_memory

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
