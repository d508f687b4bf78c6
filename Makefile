# Two commands set everything up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
# Rebuilt when the lock file or the package definition changes.
INSTALLED := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY ?= true
# Stage commands call `python`: make it the venv's.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1
# pip prints hundreds of "Location ... is ignored" warnings on these machines: show progress only.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# In braces, so that `|| true` covers grep (which fails when it filters every line), not pip.
PIP_FILTER := { grep -vE 'is ignored|^\s*$$|Requirement already satisfied' || true; }

.PHONY: install run test system-deps lint lock speed timings repro-parallel ui clean fashion-mnist benchmark-fashion-mnist

install: $(INSTALLED)

$(INSTALLED): requirements.lock requirements-dev.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) (2-3 minutes the first time)"
	@$(PY) -m pip install --progress-bar off --require-hashes -r requirements.lock \
		-r requirements-dev.lock 2>&1 | $(PIP_FILTER)
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(PIP_FILTER)
	@touch $@

run: install
	$(VENV)/bin/dvc repro

test: install system-deps
	$(PY) -m pytest

# Debian packages the tests use: chromium (MLflow UI screenshot), postgresql (team server),
# docker-compose (validates deploy/docker-compose.yml; no engine needed),
# dataset-fashion-mnist (the Fashion-MNIST source's tests read its IDX files) and a JRE (Spark).
# Installed as root with apt-get; otherwise the tests that need them skip (CI fails instead).
system-deps:
	@missing=""; command -v chromium >/dev/null || missing="chromium"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	test -f $(FASHION_MNIST)/t10k-labels-idx1-ubyte.gz || missing="$$missing dataset-fashion-mnist"; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's$$missing for the UI and team-server tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "missing$$missing and not root: the tests that need them will skip"; fi

# Debian's dataset-fashion-mnist (70,000 images, IDX files in $(FASHION_MNIST)).
fashion-mnist:
	@if [ -f $(FASHION_MNIST)/t10k-labels-idx1-ubyte.gz ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "run as root: apt-get install dataset-fashion-mnist (or set data.path to the IDX files)"; exit 1; fi

# The one-class benchmark on the full Fashion-MNIST, as a DVC experiment (needs a commit);
# `make benchmark-fashion-mnist SEEDS=3` for the published comparison (default: params.yaml's).
benchmark-fashion-mnist: install fashion-mnist
	$(VENV)/bin/dvc exp run -S data.source=fashion-mnist $(if $(SEEDS),-S benchmark.seeds=$(SEEDS)) benchmark_report

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile
	@command -v docker-compose >/dev/null || { echo "docker-compose missing: apt-get install docker-compose (or make system-deps as root)"; exit 1; }
	POSTGRES_PASSWORD=lint MINIO_ROOT_USER=lint MINIO_ROOT_PASSWORD=lint \
		docker-compose --project-directory deploy -f deploy/docker-compose.yml config -q
	$(PY) -m pytest -q tests/test_deploy.py

# Refresh the locks after changing pyproject.toml dependencies (then run `make test`).
lock: install
	$(PY) .ci/lock.py

# The MLflow UI on loopback, over the same store the pipeline writes (sqlite:///mlflow.db).
UI_PORT ?= 5000
ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
		--host 127.0.0.1 --port $(UI_PORT)

# `dvc repro` with independent stages side by side (speed/parallel_repro.py): JOBS processes of
# cores/JOBS threads each; `make repro-parallel COMPARE=1` times `dvc repro -f` against it.
JOBS ?= 2
repro-parallel: install
	$(PY) speed/parallel_repro.py --jobs $(JOBS) $(if $(COMPARE),--compare,)

# Seconds of every stage of a full `dvc repro -f` (imports and DVC's bookkeeping included).
timings: install
	$(PY) speed/pipeline_timing.py

# Training speed against the original loop and the roofline (not the anomaly benchmark).
speed: install
	$(PY) speed/train_speed.py

clean:
	rm -rf checkpoints
