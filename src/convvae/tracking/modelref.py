"""`--model` of the CLI: a local model file, or a registered version in the MLflow registry."""

from __future__ import annotations

from pathlib import Path

from convvae.anomaly.thresholds import (
    THRESHOLD_TAG,
    StoredThreshold,
    parse_threshold,
    read_threshold,
)
from convvae.config import TrackingConfig
from convvae.errors import DataError
from convvae.model.vae import ConvVAE, load_model
from convvae.runtime.files import THRESHOLD_FILE

REGISTRY_PREFIX = "models:/"


def load_model_ref(ref: str, tracking: TrackingConfig | None = None) -> ConvVAE:
    """A ConvVAE from a .pt path, ``models:/NAME@alias`` or ``models:/NAME/VERSION``.

    Registry URIs are resolved in the store that ``tracking`` names (default: the repository's).
    """
    if not ref.startswith(REGISTRY_PREFIX):
        return load_model(Path(ref))
    from convvae.tracking.tracker import Tracker

    tracker = Tracker(tracking or TrackingConfig())
    version = tracker.version(ref)  # unknown name, alias or version: one line listing what exists
    return load_model(tracker.model_file(f"models:/{version.name}/{version.version}"))


def load_scorer_ref(
    ref: str, tracking: TrackingConfig | None = None
) -> tuple[ConvVAE, StoredThreshold]:
    """A model and its anomaly threshold: threshold.json beside a .pt file, or the registered
    version's ``anomaly.threshold`` tag."""
    if not ref.startswith(REGISTRY_PREFIX):
        return load_model(Path(ref)), read_threshold(Path(ref).with_name(THRESHOLD_FILE))
    from convvae.tracking.tracker import Tracker

    tracker = Tracker(tracking or TrackingConfig())
    version = tracker.version(ref)
    record = version.tags.get(THRESHOLD_TAG)
    if record is None:
        raise DataError(
            f"{ref} (version {version.version}) has no {THRESHOLD_TAG} tag: it was registered "
            "before thresholds were stored; re-run `dvc repro -f evaluate` (or the benchmark "
            "with benchmark.register_models) to register a version that has one"
        )
    threshold = parse_threshold(record, f"{ref} tag {THRESHOLD_TAG}")
    return load_model(tracker.model_file(f"models:/{version.name}/{version.version}")), threshold
