# `make bench` and `make test` work on a machine with only Python and pip: they create
# a virtual environment in .venv, install torch and the build tools, build the
# extension, then run the benchmark or the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2

SOURCES := setup.py pyproject.toml $(shell find csrc -type f)
# numpy: torch tries to load it when it is imported and warns when it is missing.
DEPS := torch numpy pybind11 ninja setuptools wheel pytest hypothesis expecttest
# ninja prints one `[n/m] <compiler command>` line per file it compiles; shown as
# `[n/m] csrc/<file>`.
SHORT_NINJA_LINES := sed -u -E -e 's/^( *\[[0-9]+\/[0-9]+\]) .* -c ([^ ]+) .*/\1 \2/' \
	-e 's|^( *\[[0-9]+/[0-9]+\]) $(CURDIR)/|\1 |'

.PHONY: install bench test clean

# Reruns when this file changes (a package added to DEPS); pip skips what is installed.
$(VENV)/.deps: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(DEPS)
	touch $@

# pip -v streams the build's output, ninja's progress lines included; without it pip
# shows only "still running..." for the minutes a build takes.
$(VENV)/.built: $(SOURCES) | $(VENV)/.deps
	set -o pipefail; $(PY) -m pip install -v --no-build-isolation -e . 2>&1 | $(SHORT_NINJA_LINES)
	touch $@

install: $(VENV)/.built

bench: install
	$(PY) -m fused_accum.bench

test: install
	$(PY) -m pytest -q

clean:
	rm -rf build $(VENV) fused_accum/*.so fused_accum/_build_config.py *.egg-info
