"""convvae: a convolutional VAE for generation, compression, anomaly detection and imputation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("convvae")  # pyproject.toml's, as installed: one source
except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "unknown"
