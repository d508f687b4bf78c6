"""`--model` of the CLI: a local model file, or a registered version in the MLflow registry."""

from __future__ import annotations

from pathlib import Path

from convvae.config import TrackingConfig
from convvae.model import ConvVAE, load_model

REGISTRY_PREFIX = "models:/"


def load_model_ref(ref: str, tracking: TrackingConfig | None = None) -> ConvVAE:
    """A ConvVAE from a .pt path, ``models:/NAME@alias`` or ``models:/NAME/VERSION``.

    Registry URIs are resolved in the store that ``tracking`` names (default: the repository's).
    """
    if not ref.startswith(REGISTRY_PREFIX):
        return load_model(Path(ref))
    from convvae.tracking import Tracker

    return load_model(Tracker(tracking or TrackingConfig()).model_file(ref))
