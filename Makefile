# Two commands set everything up: `make demo` and `make test`.
# The distribution's interpreter when there is one: Debian builds it with PGO and LTO and links
# libpython statically, and on this project's machine it runs the gateway's Python 10-15% faster
# than the default pyenv build (shared libpython, no PGO) found first on PATH (docs/benchmarks.md,
# "Which python3"). `make clean install PYTHON=python3` picks the one on PATH instead.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3.11) python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# three test processes (pytest-xdist): most tests wait on sockets and timers, not on a core;
# `make test PYTEST_ARGS=` runs them in one process
PYTEST_ARGS ?= -n 3 --dist loadscope

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: run Mezzo all-in-one on embedded storage in ./.mezzo
demo: $(STAMP)
	$(BIN)/mezzo up

## test: the whole suite (backend tests skip when a backend is absent,
##       and fail instead with MEZZO_REQUIRE_BACKENDS=1)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
