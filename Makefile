# ftops: the README's commands. Set-up is idempotent (stamp files depend on the pin files).
SHELL := /bin/bash
PYTHON ?= python3.11
SERVING_PYTHON ?= /usr/bin/python3.11
VENV := .venv
SERVING_VENV := .venv-serving
TS := $(SERVING_VENV)/lib/python3.11/site-packages/pytriton/tritonserver
PIP := $(VENV)/bin/pip --disable-pip-version-check
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo up down test test-fast bench clean-venvs help

help:
	@echo "make demo   set up, then run the main job"
	@echo "make test   set up, then run the whole test suite"
	@echo "make setup  only set up (.venv, serving venv, tritonserver)"
	@echo "make up     start every service (Prefect, MLflow UI, Triton, gateway, Evidently UI, deployments)"
	@echo "make down   stop them (and the demo's) by PID"

setup: $(VENV)/.ftops-setup $(SERVING_VENV)/.ftops-setup

# torch first: pip takes the local CPU wheel; any other order pulls a multi-GB CUDA build.
$(VENV)/.ftops-setup: pyproject.toml requirements/constraints.txt requirements/assets.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c requirements/constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps -r requirements/assets.txt
	@touch $@
	@echo "platform venv ready: $(VENV)"

# The serving venv mirrors a Triton container: numpy<2 for the python-backend stub, built
# from the system python whose libpython the stub links.
$(SERVING_VENV)/.ftops-setup: requirements/serving.txt requirements/serving.lock
	@test -x $(SERVING_VENV)/bin/python || $(SERVING_PYTHON) -m venv $(SERVING_VENV)
	$(SERVING_VENV)/bin/pip --disable-pip-version-check install -q -c requirements/serving.lock -r requirements/serving.txt
	cp $(TS)/python_backend_stubs/3.11/triton_python_backend_stub $(TS)/backends/python/
	@$(TS)/bin/tritonserver --help 2>&1 | grep -q "Usage: tritonserver" || (echo "tritonserver does not run: see ldd $(TS)/bin/tritonserver" && exit 1)
	@touch $@
	@echo "serving venv ready: $(SERVING_VENV) (tritonserver: $(TS)/bin/tritonserver)"

demo: setup
	$(VENV)/bin/ftops demo

up: setup
	$(VENV)/bin/ftops up

# Stops the default project's services and the demo's, by PID.
down:
	@test -x $(VENV)/bin/ftops || exit 0; $(VENV)/bin/ftops down; $(VENV)/bin/ftops down -c deploy/demo.yaml

test: setup
	$(VENV)/bin/python -m pytest tests --durations=15

test-fast: setup
	$(VENV)/bin/python -m pytest tests -m "not slow"

# Each benchmark also writes <name>.json + <name>.md under bench/results/<commit>/ (bench/report.py).
bench: setup
	@export FTOPS_BENCH_RESULTS=$${FTOPS_BENCH_RESULTS:-bench/results/$$(git rev-parse --short HEAD)}; \
	for b in $(filter-out bench/report.py,$(wildcard bench/*.py)); do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

clean-venvs:
	rm -rf $(VENV) $(SERVING_VENV)
