"""What a model's distance scores and patch map compare an image with: its ``Reference``,
stored in the model file beside the weights.

The reference is the model's normal training images, the patch features the patch map searches
(a coreset of them), and the mean and standard deviation of each fused component on held-out
normal images (``convvae.anomaly.fit.fit_reference`` makes it). A features-only reference
(``anomaly.store_images: false``) holds, in place of the images, the image-level features the
scores compare with (``IMAGE_BANKS``); the ``cosine_knn`` score, which compares pixels, needs
the images and is not available from it.
"""

from __future__ import annotations

import dataclasses
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
# What a features-only reference keeps of each training image: its encoder's last hidden layer
# and its two contrast statistics (convvae.anomaly.scorer builds both from images).
IMAGE_BANKS = ("hidden_bank", "contrast_bank")


@dataclass(frozen=True, eq=False)  # compared by identity: it holds arrays
class Reference:
    """Normal training images, their patch bank and the fused components' statistics on
    held-out normal images."""

    images: np.ndarray | None  # uint8 (N, C, H, W); None in a features-only reference
    center: dict[str, float]  # per fused component: its mean on held-out normal images
    scale: dict[str, float]  # and its standard deviation
    # float32 (rows, C'): the patch features the patch map searches; None in files written
    # before banks were stored (their scorer draws its random subset, as then)
    patch_bank: np.ndarray | None = field(default=None, kw_only=True)
    # A features-only reference's IMAGE_BANKS, one row per training image; empty otherwise.
    image_banks: dict[str, np.ndarray] = field(default_factory=dict, kw_only=True)

    def payload(self) -> dict:
        """What the model file stores (tensors and floats: loadable with ``weights_only``)."""
        stored = {}
        if self.images is not None:
            stored["images"] = torch.from_numpy(np.ascontiguousarray(self.images))
        stored |= {"center": dict(self.center), "scale": dict(self.scale)}
        if self.patch_bank is not None:
            stored["patch_bank"] = torch.from_numpy(np.ascontiguousarray(self.patch_bank))
        if self.image_banks:
            stored["image_banks"] = {
                name: torch.from_numpy(np.ascontiguousarray(bank))
                for name, bank in self.image_banks.items()
            }
        return stored

    @classmethod
    def from_payload(cls, raw: dict) -> Reference:
        banks = raw.get("image_banks")
        banks = {} if banks is None else banks
        images = raw.get("images")
        # Images or their features, never both (the writer stores one or the other).
        wanted = set() if images is not None else set(IMAGE_BANKS)
        no_bank = images is None and raw.get("patch_bank") is None  # features only: it has one
        if not isinstance(banks, dict) or set(banks) != wanted or no_bank:
            raise CheckpointError(
                f"the model file's reference must hold its images or the features "
                f"{', '.join(IMAGE_BANKS)} and a patch bank, one or the other; {_REFIT}"
            )
        arrays = {"images": images, "patch_bank": raw.get("patch_bank"), **banks}
        found = {name: _array(name, value) for name, value in arrays.items() if value is not None}
        return cls(
            found.get("images"),
            dict(raw["center"]),
            dict(raw["scale"]),
            patch_bank=found.get("patch_bank"),
            image_banks={name: found[name] for name in banks},
        )

    def stored_bank(self, name: str) -> np.ndarray | None:
        """The bank ``name`` as stored in the file (``patch_bank`` or one of IMAGE_BANKS), or
        None where the scorer builds it from the images."""
        return self.patch_bank if name == "patch_bank" else self.image_banks.get(name)

    def with_images(self, images: np.ndarray) -> Reference:
        """This reference with the training images beside its features: what measurement
        needs for the scores a features-only file cannot give (``cosine_knn``)."""
        return dataclasses.replace(self, images=np.ascontiguousarray(images))


def _array(name: str, value) -> np.ndarray:
    """A stored tensor as numpy: dense, of a dtype numpy reads, else a one-line error."""
    what = name.replace("_", " ")
    if not isinstance(value, torch.Tensor):
        kind = type(value).__name__
        raise CheckpointError(f"the model file's {what} is a {kind}, not a tensor; {_REFIT}")
    readable = (torch.uint8, torch.float32, torch.float64)
    if value.layout != torch.strided or value.dtype not in readable:
        raise CheckpointError(
            f"the model file's {what} is a {value.layout} {value.dtype} tensor, not a dense "
            f"uint8 or float one; {_REFIT}"
        )
    return value.detach().numpy()


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
    if reference is not None and reference.image_banks:
        _check_image_banks(reference.image_banks, stored.model, path)
    if reference is not None and reference.images is not None:
        _check_images(reference.images, stored.model, path)
    return stored.model, reference


def _check_images(images: np.ndarray, model: ConvVAE, path: str | Path) -> None:
    """Stored training images: uint8 (N, C, H, W) of the model's image shape."""
    shape = tuple(model.arch.image_shape)
    if images.dtype != np.uint8 or images.shape[1:] != shape or not len(images):
        raise CheckpointError(
            f"{path}: its reference images are {images.dtype} {images.shape}, not uint8 images "
            f"of shape {shape}; {_REFIT}"
        )


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


def _check_image_banks(banks: dict[str, np.ndarray], model: ConvVAE, path: str | Path) -> None:
    """A features-only file's banks: finite rows of the model's hidden width (float32) and of
    the two contrast statistics (float64), one row per training image in each."""
    hidden = model.to_mu.in_features  # the encoder's last hidden layer
    shapes = {"hidden_bank": (np.float32, hidden), "contrast_bank": (np.float64, 2)}
    for name, bank in banks.items():
        dtype, width = shapes[name]
        if bank.dtype != dtype or bank.ndim != 2 or bank.shape[1] != width or not len(bank):
            raise CheckpointError(
                f"{path}: its {name} is {bank.dtype} {bank.shape}, not {np.dtype(dtype)} rows of "
                f"{width}; {_REFIT}"
            )
        if not np.isfinite(bank).all():
            raise CheckpointError(f"{path}: its {name} holds NaN or infinite values; {_REFIT}")
    if len({len(bank) for bank in banks.values()}) != 1:
        raise CheckpointError(f"{path}: its feature banks have different row counts; {_REFIT}")
