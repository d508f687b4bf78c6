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
    return load_model(_registered(ref, tracking)[0])


def load_detector_ref(ref: str, tracking: TrackingConfig | None = None) -> Detector:
    """A model's detector: the model file and threshold.json beside it, or the registered
    version's file and ``anomaly.threshold`` tag."""
    if not ref.startswith(REGISTRY_PREFIX):
        return load_detector(Path(ref))
    model_file, version = _registered(ref, tracking)
    tag = version.tags.get(THRESHOLD_TAG)
    if tag is None:
        raise DataError(
            f"{ref} (version {version.version}) has no {THRESHOLD_TAG} tag: it was registered "
            "before thresholds were stored; re-run `dvc repro -f evaluate` (or the benchmark "
            "with benchmark.register_models) to register a version that has one"
        )
    return detector_from(model_file, parse_record(tag, f"{ref} tag {THRESHOLD_TAG}"))


def _registered(ref: str, tracking: TrackingConfig | None):
    """The local model file of a registered version, and the version (its tags)."""
    from convvae.tracking.tracker import Tracker

    registry = Tracker(tracking or TrackingConfig()).registry
    version = registry.version(ref)  # unknown name, alias or version: one line listing what exists
    return registry.model_file(f"models:/{version.name}/{version.version}"), version
