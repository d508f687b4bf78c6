# syntax=docker/dockerfile:1
# The convvae pipeline: `docker build -t convvae .` then `docker run --rm convvae` runs `dvc repro`
# on the embedded data. CPU image by default; for NVIDIA GPUs build with
#   --build-arg TORCH_VARIANT=cu130 [--build-arg BASE_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04]
# (the cu130 wheels carry their CUDA libraries; the CUDA base only matters for other tools).
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock pyproject.toml ./
# torch and torchvision from PyTorch's own index (a CPU build is 10x smaller than the CUDA one),
# pinned by version only: the lock's hashes are PyPI's wheels, the CUDA build. Everything else
# exactly as locked (with its hashes), minus the CUDA wheels the CPU build does not need.
# --build-arg TORCH_VARIANT=locked installs everything, torch included, from the hashed lock
# (PyPI's CUDA build). requirements-dev.lock (tests, lint) never enters the image.
RUN python -m venv /opt/venv \
 && if [ "$TORCH_VARIANT" = locked ]; then \
      /opt/venv/bin/pip install --require-hashes -r requirements.lock; \
    else \
      /opt/venv/bin/pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==2.14.1" "torchvision==0.29.1" \
      && awk '/^[a-z]/ { skip = /^(torch==|torchvision==|triton==|nvidia-|cuda-)/ } !skip' \
        requirements.lock > /tmp/rest.txt \
      && /opt/venv/bin/pip install --require-hashes -r /tmp/rest.txt; \
    fi
COPY src ./src
# The build backend from the hashed lock, not a fresh unpinned download (build isolation).
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation .

FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.39.* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 convvae \
 && install -d -o 10001 /dvc-remote
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
WORKDIR /home/convvae/app
COPY --chown=convvae:convvae . .
USER 10001
# DVC wants a git repository for `dvc repro`; the image has none of the host's history.
RUN git init -q && git config user.email convvae@localhost && git config user.name convvae
CMD ["dvc", "repro"]
