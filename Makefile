# The two entry points of the README, and the steps they are made of.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo venv testbed lint typecheck pytest bench docs clean reliability-report

test: lint typecheck testbed pytest ## lint, types, test bed, the whole suite

demo: venv testbed ## a local control plane with the KubeRay simulator and the examples
	$(BIN)/python -m testbed.demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

testbed: venv ## build (or find cached) kube-apiserver, etcd and kubectl
	bash testbed/build.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

reliability-report: venv ## docs/reliability.md's generated figures, from the last runs' artifacts
	$(BIN)/python -m tests.reliability.report

bench: venv ## benchmarks (not part of make test)
	$(BIN)/python -m bench.suite --out docs

docs: venv ## regenerate docs/cli.md from the CLI's argument parser
	$(BIN)/python -m gitsync.cli_docs --write

clean: ## remove the venv (the test-bed binaries in .testbed/ stay cached)
	rm -rf $(VENV)
