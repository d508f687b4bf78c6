"""Train, then fit the reference: the one recipe behind the pipeline's model (train stage) and
every class model of the benchmark."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convvae.anomaly.reference import IMAGE_BANKS, Reference
from convvae.anomaly.scorer import Scorer, fitted_patch_bank
from convvae.anomaly.scores import STANDARDISED, STANDARDISED_AFTER, ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.config import AnomalyConfig, ModelConfig, TrainConfig
from convvae.data.splits import selection_and_calibration
from convvae.model.vae import ConvVAE
from convvae.training.devices import ProcessGroup
from convvae.training.history import TrainResult
from convvae.training.recipe import train_vae


@dataclass(frozen=True)
class FittedModel:
    """A trained model and what its distance scores compare with (None on workers of a
    distributed run: only the main process fits it)."""

    training: TrainResult
    reference: Reference | None


def fit_reference(
    model: ConvVAE,
    train_images: np.ndarray,
    held_out_normal: np.ndarray,
    samples: int,
    noise_seed: int,
    store_images: bool = True,
) -> Reference:
    """The model's reference: its normal training images (uint8 (N, C, H, W)), their patch
    bank (a coreset: ``convvae.anomaly.patch_bank``), and the mean and
    standard deviation of each standardised score (the fused parts, patch_knn, then fused and
    patch_knn_guarded) on ``held_out_normal`` images, which must be neither training nor
    calibration images.
    ``samples`` and ``noise_seed``: those of the stored score. ``store_images`` false: the
    images' IMAGE_BANKS in their place, and no cosine_knn (it compares pixels), so fused has
    three parts."""
    bank = fitted_patch_bank(model, train_images)
    unscaled = Reference(np.ascontiguousarray(train_images), {}, {}, patch_bank=bank)
    scorer = Scorer(model, unscaled, ScoreSpec("excess_nll", samples, noise_seed))
    kept = {"images": unscaled.images}
    if not store_images:
        image_banks = {name: scorer.bank(name).numpy() for name in IMAGE_BANKS}
        kept = {"images": None, "image_banks": image_banks}
    names = tuple(name for name in STANDARDISED if store_images or name != "cosine_knn")
    raw = every_score(scorer, held_out_normal, names)
    center = {name: float(raw[name].mean()) for name in names}
    scale = {name: float(raw[name].std() + 1e-12) for name in names}
    first = dataclasses.replace(unscaled, center=center, scale=scale)
    # fused and patch_knn_guarded are made of those statistics: theirs come second.
    parts = {name: torch.from_numpy(values) for name, values in raw.items()}
    made = Scorer(model, first, scorer.spec).combined(parts, STANDARDISED_AFTER)
    made = {name: made[name].numpy() for name in STANDARDISED_AFTER}
    return dataclasses.replace(
        unscaled,
        center={**center, **{name: float(made[name].mean()) for name in STANDARDISED_AFTER}},
        scale={**scale, **{name: float(made[name].std() + 1e-12) for name in STANDARDISED_AFTER}},
        **kept,
    )


def train_and_fit(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    anomaly: AnomalyConfig,
    train_images: np.ndarray,
    val_images: np.ndarray,
    *,
    checkpoint_path: Path | None = None,
    fingerprint: dict | None = None,
    group: ProcessGroup | None = None,
    log: Callable[[str], None] = print,
) -> FittedModel:
    """A ConvVAE trained on ``train_images`` (uint8 (N, C, H, W)), early stopping on the
    selection half of the normal ``val_images``, then its reference fitted on that same half:
    the calibration half is left for the threshold. Keyword arguments go to the trainer
    (``convvae.training.recipe.train_vae``)."""
    group = group or ProcessGroup()
    selection, _ = selection_and_calibration(val_images)
    result = train_vae(
        model_cfg,
        train_cfg,
        torch.from_numpy(train_images),
        torch.from_numpy(selection),
        checkpoint_path=checkpoint_path,
        fingerprint=fingerprint,
        group=group,
        log=log,
    )
    if not group.is_main:
        return FittedModel(result, None)
    reference = fit_reference(
        result.model,
        train_images,
        selection,
        anomaly.samples,
        anomaly.noise_seed,
        anomaly.store_images,
    )
    return FittedModel(result, reference)
