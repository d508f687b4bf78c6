"""`--model` of the CLI: a local model file, or a registered version in the MLflow registry."""

from __future__ import annotations

from pathlib import Path

from convvae.anomaly.detector import Detector, detector_from, load_detector
from convvae.anomaly.thresholds import THRESHOLD_TAG, parse_record
from convvae.config import TrackingConfig
from convvae.errors import DataError
from convvae.model.files import load_model
from convvae.model.vae import ConvVAE

REGISTRY_PREFIX = "models:/"


def load_model_ref(ref: str, tracking: TrackingConfig | None = None) -> ConvVAE:
    """A ConvVAE from a .pt path, ``models:/NAME@alias`` or ``models:/NAME/VERSION``.

    Registry URIs are resolved in the store that ``tracking`` names (default: the repository's).
    """
    if not ref.startswith(REGISTRY_PREFIX):
        return load_model(Path(ref))
    return load_model(_registry(tracking).model_file(ref))


def load_detector_ref(ref: str, tracking: TrackingConfig | None = None) -> Detector:
    """A model's detector: the model file and threshold.json beside it, or the registered
    version's file and ``anomaly.threshold`` tag."""
    if not ref.startswith(REGISTRY_PREFIX):
        return load_detector(Path(ref))
    model_file, tag = _registry(tracking).complete_version(ref)
    return detector_from(model_file, parse_record(tag, f"{ref} tag {THRESHOLD_TAG}"))


def served_model_folder(ref: str, tracking: TrackingConfig | None = None) -> Path:
    """The MLflow model folder to serve: a complete registered version's (downloaded), or a
    local folder holding an MLmodel file."""
    if ref.startswith(REGISTRY_PREFIX):
        return _registry(tracking).complete_version(ref)[0].parents[1]
    folder = Path(ref)
    if not (folder / "MLmodel").is_file():
        raise DataError(
            f"{ref}: not an MLflow model folder (no MLmodel file); pass models:/NAME@alias"
        )
    return folder


def _registry(tracking: TrackingConfig | None):
    """The registry of the store ``tracking`` names (default: the repository's)."""
    from convvae.tracking.tracker import Tracker

    return Tracker(tracking or TrackingConfig()).registry
