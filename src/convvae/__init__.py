"""convvae: a convolutional VAE for generation, compression, anomaly detection and imputation."""

import os
from importlib.metadata import PackageNotFoundError, version

# MLflow 3 sends usage telemetry unless told not to; ours is off unless a user turns it on
# (MLFLOW_DISABLE_TELEMETRY=false). Set before any of our modules imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

try:
    __version__ = version("convvae")  # pyproject.toml's, as installed: one source
except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "unknown"
