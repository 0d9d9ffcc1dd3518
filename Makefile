PYTHON ?= $(shell command -v python3.11 || command -v python3)
DEMO ?= llama
PORT ?= 8000
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv serve test lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(PY) -m server.cli serve --demo $(DEMO) --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check engines server benchmarks tests

clean:
	rm -rf $(VENV) build .pytest_cache
