# Set-up, pipeline and tests. Every target creates .venv and installs the
# pinned environment first when it is missing or out of date.

VENV := .venv
BOOTSTRAP_PYTHON ?= $(shell command -v python3.11 || command -v python3)
INSTALLED := $(VENV)/.installed

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test bench mlflow-ui clean

setup: $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

repro: $(INSTALLED)
	dvc repro

# In CI (CI=true) the PostgreSQL tracking-server test gets its server programs
# installed first; elsewhere that test is skipped when they are missing.
test: $(INSTALLED)
ifeq ($(CI),true)
	.ci/install-postgresql
endif
	python -m pytest

# The MLflow UI on the project's store, listening on loopback only. Runs keep
# their artifacts in mlartifacts/ under absolute file URIs, which the server
# reads directly. With --artifacts-destination, experiments created in the UI
# keep their artifacts there too. Another port: make mlflow-ui MLFLOW_PORT=5001
MLFLOW_PORT ?= 5000

mlflow-ui: $(INSTALLED)
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--artifacts-destination $(CURDIR)/mlartifacts \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

# Benchmarks, not part of the tests (see BENCHMARKS.md): the trainer against a
# hand-written loop, the book's loop and Lightning, one thread against two,
# and epoch time and memory against data size. Lightning comes with the bench
# extra, which this target installs within the pinned versions.
bench: $(INSTALLED)
	python -m pip install --quiet --disable-pip-version-check -c requirements.txt -e '.[bench]'
	python benchmarks/bench_trainer.py --csv benchmarks/results/trainer.csv
	python benchmarks/bench_threads.py --csv benchmarks/results/threads.csv
	python benchmarks/bench_scaling.py --csv benchmarks/results/scaling.csv --plot benchmarks/scaling.png

clean:
	rm -rf $(VENV) dvc_plots .pytest_cache
