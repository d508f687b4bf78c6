"""What a model's distance scores and patch map compare an image with: its ``Reference``,
stored in the model file beside the weights.

The reference is the model's normal training images, the patch features the patch map searches
(a coreset of them), and the mean and standard deviation of each fused component on held-out
normal images (``convvae.anomaly.fit.fit_reference`` makes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convvae.anomaly.patch_bank import LEGACY_RANDOM_ROWS
from convvae.errors import CheckpointError
from convvae.model.architecture import Architecture
from convvae.model.files import load_model_file, save_model
from convvae.model.vae import ConvVAE

# The model file's key for the reference (older files wrote the same).
_KEY = "reference"
_REFIT = "re-run the stage that wrote it (dvc repro -f train / benchmark)"


@dataclass(frozen=True, eq=False)  # compared by identity: it holds arrays
class Reference:
    """Normal training images, their patch bank and the fused components' statistics on
    held-out normal images."""

    images: np.ndarray  # uint8 (N, C, H, W)
    center: dict[str, float]  # per fused component: its mean on held-out normal images
    scale: dict[str, float]  # and its standard deviation
    # float32 (rows, C'): the patch features the patch map searches; None in files written
    # before banks were stored (their scorer draws its random subset, as then)
    patch_bank: np.ndarray | None = field(default=None, kw_only=True)

    def payload(self) -> dict:
        """What the model file stores (tensors and floats: loadable with ``weights_only``)."""
        stored = {
            "images": torch.from_numpy(np.ascontiguousarray(self.images)),
            "center": dict(self.center),
            "scale": dict(self.scale),
        }
        if self.patch_bank is not None:
            stored["patch_bank"] = torch.from_numpy(np.ascontiguousarray(self.patch_bank))
        return stored

    @classmethod
    def from_payload(cls, raw: dict) -> Reference:
        bank = raw.get("patch_bank")
        if bank is not None and not isinstance(bank, torch.Tensor):
            raise CheckpointError(
                f"the model file's patch bank is a {type(bank).__name__}, not a tensor; {_REFIT}"
            )
        return cls(
            raw["images"].numpy(),
            dict(raw["center"]),
            dict(raw["scale"]),
            patch_bank=None if bank is None else bank.detach().numpy(),
        )


def save_fitted_model(model: ConvVAE, reference: Reference | None, path: str | Path) -> None:
    """A model file with the model's reference (none: a file only likelihood scores can use)."""
    save_model(model, path, {_KEY: reference.payload()} if reference is not None else {})


def load_fitted_model(
    path: str | Path, expected: Architecture | None = None
) -> tuple[ConvVAE, Reference | None]:
    """The model of a model file and its reference (None when the file has none)."""
    stored = load_model_file(path, expected)
    raw = stored.extras.get(_KEY)
    reference = None if raw is None else Reference.from_payload(raw)
    if reference is not None and reference.patch_bank is not None:
        _check_patch_bank(reference.patch_bank, stored.model, path)
    return stored.model, reference


def _check_patch_bank(bank: np.ndarray, model: ConvVAE, path: str | Path) -> None:
    """A stored bank must be float32 rows of the model's patch features, no more of them than
    any bank we write (a forged file must not size the scorer's memory)."""
    width = model.encoder[0].out_channels
    if bank.dtype != np.float32 or bank.ndim != 2 or bank.shape[1] != width:
        raise CheckpointError(
            f"{path}: its patch bank is {bank.dtype} {bank.shape}, not float32 rows of "
            f"{width} patch features; {_REFIT}"
        )
    if not 0 < len(bank) <= LEGACY_RANDOM_ROWS:
        raise CheckpointError(
            f"{path}: its patch bank has {len(bank)} rows, not 1 to {LEGACY_RANDOM_ROWS}; {_REFIT}"
        )
    if not np.isfinite(bank).all():  # a NaN row would make every map NaN: nothing flagged
        raise CheckpointError(f"{path}: its patch bank holds NaN or infinite values; {_REFIT}")
