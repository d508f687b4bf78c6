# Two commands set everything up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
# Rebuilt when the lock file or the package definition changes.
INSTALLED := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
# Stage commands call `python`: make it the venv's.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1
# pip prints hundreds of "Location ... is ignored" warnings on these machines: show progress only.
PIP_FILTER := grep -vE 'is ignored|^\s*$$|Requirement already satisfied' || true

.PHONY: install run test system-deps lint lock benchmark ui clean

install: $(INSTALLED)

$(INSTALLED): requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) (2-3 minutes the first time)"
	@$(PY) -m pip install --progress-bar off -r requirements.lock 2>&1 | $(PIP_FILTER)
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(PIP_FILTER)
	@touch $@

run: install
	$(VENV)/bin/dvc repro

test: install system-deps
	$(PY) -m pytest

# Debian's chromium for the MLflow UI screenshot test (as root with apt-get; else that test skips).
system-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the MLflow UI test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found and not root: the MLflow UI screenshot test will skip"; fi; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Refresh the lock after changing pyproject.toml dependencies (then run `make test`).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

# The MLflow UI on loopback, over the same store the pipeline writes (sqlite:///mlflow.db).
UI_PORT ?= 5000
ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
		--host 127.0.0.1 --port $(UI_PORT)

benchmark: install
	$(PY) benchmarks/train_speed.py

clean:
	rm -rf checkpoints
