# `make bench` and `make test` work on a machine with only Python and pip: they create
# a virtual environment in .venv, install torch and the build tools, build the
# extension, then run the benchmark or the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2

SOURCES := setup.py pyproject.toml $(shell find csrc -type f)

.PHONY: install bench test clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch pybind11 ninja setuptools wheel pytest hypothesis expecttest
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --no-build-isolation -e .
	touch $@

install: $(VENV)/.built

bench: install
	$(PY) -m fused_accum.bench

test: install
	$(PY) -m pytest -q

clean:
	rm -rf build $(VENV) fused_accum/*.so fused_accum/_build_config.py *.egg-info
