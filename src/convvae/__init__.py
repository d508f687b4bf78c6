"""convvae: a convolutional VAE for generation, compression, anomaly detection and imputation."""

__version__ = "0.1.0"
