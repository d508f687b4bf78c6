"""What a model's distance scores and patch map compare an image with: its ``Reference``,
stored in the model file beside the weights.

The reference is the model's normal training images, and the mean and standard deviation of
each fused component on held-out normal images (``convvae.anomaly.fit.fit_reference`` makes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convvae.model.architecture import Architecture
from convvae.model.files import load_model_file, save_model
from convvae.model.vae import ConvVAE

# The model file's key for the reference (older files wrote the same).
_KEY = "reference"


@dataclass(frozen=True, eq=False)  # compared by identity: it holds arrays
class Reference:
    """Normal training images and the fused components' statistics on held-out normal images."""

    images: np.ndarray  # uint8 (N, C, H, W)
    center: dict[str, float]  # per fused component: its mean on held-out normal images
    scale: dict[str, float]  # and its standard deviation

    def payload(self) -> dict:
        """What the model file stores (tensors and floats: loadable with ``weights_only``)."""
        return {
            "images": torch.from_numpy(np.ascontiguousarray(self.images)),
            "center": dict(self.center),
            "scale": dict(self.scale),
        }

    @classmethod
    def from_payload(cls, raw: dict) -> Reference:
        return cls(raw["images"].numpy(), dict(raw["center"]), dict(raw["scale"]))


def save_fitted_model(model: ConvVAE, reference: Reference | None, path: str | Path) -> None:
    """A model file with the model's reference (none: a file only likelihood scores can use)."""
    save_model(model, path, {_KEY: reference.payload()} if reference is not None else {})


def load_fitted_model(
    path: str | Path, expected: Architecture | None = None
) -> tuple[ConvVAE, Reference | None]:
    """The model of a model file and its reference (None when the file has none)."""
    stored = load_model_file(path, expected)
    raw = stored.extras.get(_KEY)
    return stored.model, None if raw is None else Reference.from_payload(raw)
