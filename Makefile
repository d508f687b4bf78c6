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

.PHONY: install run test lint lock benchmark clean

install: $(INSTALLED)

$(INSTALLED): requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) (2-3 minutes the first time)"
	@$(PY) -m pip install --progress-bar off -r requirements.lock 2>&1 | $(PIP_FILTER)
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(PIP_FILTER)
	@touch $@

run: install
	$(VENV)/bin/dvc repro

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Refresh the lock after changing pyproject.toml dependencies (then run `make test`).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

benchmark: install
	$(PY) benchmarks/train_speed.py

clean:
	rm -rf checkpoints
