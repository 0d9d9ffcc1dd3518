PYTHON ?= $(shell command -v python3.11 || command -v python3)
DEMO ?=
PORT ?= 8000
VENV ?= .venv
# INSTALL=0: use $(VENV) as it is, without installing or refreshing anything (an environment you manage).
INSTALL ?= 1
PY := $(VENV)/bin/python
# Serving needs only the runtime dependencies; the test extras (moto, kubernetes-validate, matplotlib,
# accelerate, ruff, openai, ...) come on top for `make test`. Each install has its own stamp, so `make serve`
# after `make test` (or the reverse, once both are installed) installs nothing.
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed

# A clear word instead of pip's "requires a different Python" minutes later.
NEW_VENV = { $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	|| { echo "error: Python 3.11 or later is needed ($(PYTHON) is not); install python3.11 or run \
make serve PYTHON=/path/to/python3.11" >&2; exit 1; }; } && $(PYTHON) -m venv $(VENV)

ifeq ($(INSTALL),1)
SERVE_DEPS := $(SERVE_STAMP)
TEST_DEPS := $(TEST_STAMP)
endif

.PHONY: venv serve test lint clean

$(SERVE_STAMP): pyproject.toml
	@test -x $(PY) || $(NEW_VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@touch $(SERVE_STAMP)

# '.[test]' holds every runtime dependency too: a test environment serves as well.
$(TEST_STAMP): pyproject.toml
	@test -x $(PY) || $(NEW_VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(TEST_STAMP) $(SERVE_STAMP)

venv: $(SERVE_DEPS)

serve: $(SERVE_DEPS)
	$(PY) -m server.cli serve $(if $(DEMO),--demo $(DEMO)) --port $(PORT)

test: $(TEST_DEPS)
	$(PY) -m pytest -q

lint: $(TEST_DEPS)
	$(PY) -m ruff check engines server benchmarks tests

clean:
	rm -rf $(VENV) build .pytest_cache
