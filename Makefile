# The two entry points of the README, and the steps they are made of.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The declared minimum versions (tests/constraints-minimum.txt), in a venv of their own.
MIN_VENV  := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed
MIN_TESTS := tests/unit tests/source tests/report tests/test_layering.py tests/test_wheel.py
# What `make demo` runs KubeRay with: simulator (the default, a few minutes), or real (the
# KubeRay operator and real Ray heads: `make demo RAY=real`, docs/quickstart.md).
RAY ?= simulator

.PHONY: test test-quick test-testbed test-serial test-min-deps durations demo venv testbed lint typecheck pytest bench docs clean reliability-report zero-downtime-report

# The whole check: the test-bed build overlapped with venv, lint, types and the tests that need
# no binary; then the test-bed tests in parallel; then the serial reliability suite; then a
# table of where the time went (testbed/ci.py, docs/testbed.md). GITSYNC_CI_PHASES=quick,...
# runs some phases only; GITSYNC_TEST_WORKERS sets the parallel phase's workers.
test: ## venv, lint, types, test bed, the whole suite
	$(PYTHON) testbed/ci.py

test-quick: ## lint, types and the tests that need no test bed (about 3 minutes)
	GITSYNC_CI_PHASES=venv,lint,typecheck,quick $(PYTHON) testbed/ci.py

test-testbed: ## the test-bed tests, in parallel (the real-Ray modules one after another beside them)
	GITSYNC_CI_PHASES=venv,build,testbed,ray $(PYTHON) testbed/ci.py

test-serial: ## the reliability suite, alone
	GITSYNC_CI_PHASES=venv,build,serial $(PYTHON) testbed/ci.py

durations: ## tests/durations.json from the last make test: parallel workers take the longest modules first
	$(PYTHON) testbed/ci.py --write-durations

demo: venv testbed ## a local control plane with the KubeRay simulator (RAY=real: real Ray) and the examples
	$(BIN)/python -m testbed.demo --ray $(RAY)

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

testbed: venv ## build (or find cached) kube-apiserver, etcd and kubectl
	bash testbed/build.sh

lint: venv ## ruff, and the import contracts in pyproject.toml (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

pytest: venv testbed ## the whole suite in one process, one test after another
	$(BIN)/pytest

test-min-deps: $(MIN_STAMP) ## the tests that need no test bed, on the oldest declared dependencies
	$(MIN_VENV)/bin/pytest -p no:cacheprovider -m "not testbed" $(MIN_TESTS)

# Rebuilt only when the bounds change: a second run installs nothing.
$(MIN_STAMP): pyproject.toml tests/constraints-minimum.txt
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python -m pip install --quiet --constraint tests/constraints-minimum.txt \
	  --editable . pytest pytest-timeout hypothesis setuptools import-linter
	touch $@

reliability-report: venv ## docs/reliability.md's generated figures, from the last runs' artifacts
	$(BIN)/python -m tests.reliability.report

zero-downtime-report: venv testbed ## docs/zero-downtime.md's table: the real-Ray module alone, then its figures
	$(BIN)/pytest -p no:xdist tests/integration/test_real_ray.py
	$(BIN)/python -m tests.integration.zero_downtime

bench: venv ## benchmarks (not part of make test)
	$(BIN)/python -m bench.suite --out docs

docs: venv ## regenerate docs/cli.md from the CLI's argument parser
	$(BIN)/python -m gitsync.cli_docs --write

clean: ## remove the venvs (the test-bed binaries in .testbed/ stay cached)
	rm -rf $(VENV) $(MIN_VENV)
