"""Ablations run beside our default every time, to show whether the trained VAE is the reason
it works:

- ``untrained_encoder``: our default score computed exactly as ours (reference, statistics,
  threshold), by the network as initialised, never trained;
- ``pixel_patch_knn`` (folders): the default map's patch search over raw pixel patches, as the
  first convolution reads them (its kernel, stride and padding): the same search, upsampling and
  smoothing, no network;
- and the methods that need no trained VAE at all: our own ``cosine_knn`` and ``contrast_knn``,
  PyOD's KNN, IForest and AutoEncoder (pixels), the per-pixel Gaussian (folders).

``VAE_FREE``: the methods counted as using no trained VAE, whose best our default is measured
against (``margin_over_vae_free``). PyOD's VAE is a trained VAE (on pixels), so it is a peer, not
one of them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from convvae.anomaly.fit import fit_reference
from convvae.anomaly.reference import Reference
from convvae.anomaly.scorer import Scorer, fitted_patch_bank
from convvae.anomaly.scores import ScoreSpec
from convvae.config import AnomalyConfig, ModelConfig, Params
from convvae.data.splits import selection_and_calibration
from convvae.model.architecture import resolve_architecture
from convvae.model.vae import ConvVAE

VAE_FREE = (
    "cosine_knn",
    "contrast_knn",
    "untrained_encoder",
    "pixel_patch_knn",
    "pyod_knn",
    "pyod_iforest",
    "pyod_autoencoder",
    "gaussian_zscore",
)


def untrained_model(model_cfg: ModelConfig, image_shape: tuple[int, ...], seed: int) -> ConvVAE:
    """The ConvVAE our training would start from with ``seed`` (its ``train.seed``); the
    global random state is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ConvVAE(resolve_architecture(model_cfg, image_shape)).eval()


def untrained_scorer(
    model_cfg: ModelConfig,
    anomaly: AnomalyConfig,
    train_images: np.ndarray,
    held_out_normal: np.ndarray,
    spec: ScoreSpec,
    seed: int,
) -> Scorer:
    """``spec``'s score by the untrained network, its reference fitted as ours is."""
    model = untrained_model(model_cfg, train_images.shape[1:], seed)
    reference = fit_reference(
        model,
        train_images,
        held_out_normal,
        anomaly.samples,
        anomaly.noise_seed,
        anomaly.store_images,
    )
    return Scorer(model, reference, spec)


def defect_ablations(
    params: Params, train_images: np.ndarray, val_images: np.ndarray
) -> dict[str, Scorer]:
    """The folder ablations measured beside the default on the defects: ``untrained_encoder``
    (the default score, reference on the selection half as ours) and ``pixel_patch_knn``."""
    selection, _ = selection_and_calibration(val_images)
    spec = ScoreSpec.from_config(params.anomaly)
    untrained = untrained_scorer(
        params.model, params.anomaly, train_images, selection, spec, params.train.seed
    )
    return {
        "untrained_encoder": untrained,
        "pixel_patch_knn": pixel_patch_scorer(params.model, train_images),
    }


def pixel_patch_scorer(model_cfg: ModelConfig, train_images: np.ndarray) -> Scorer:
    """``patch_knn`` and the feature-kNN map over raw pixel patches: the first convolution
    replaced by one that copies each pixel of its window to a channel of its own (no ReLU
    effect on pixels in [0, 1]); the rest of the network is never used."""
    model = untrained_model(model_cfg, train_images.shape[1:], seed=0)
    first = model.encoder[0]
    channels, (kernel_h, kernel_w) = first.in_channels, first.kernel_size
    copy = nn.Conv2d(channels, channels * kernel_h * kernel_w, first.kernel_size,
                     first.stride, first.padding)  # fmt: skip
    with torch.no_grad():
        copy.weight.zero_()
        copy.bias.zero_()
        for out, (c, row, col) in enumerate(np.ndindex(channels, kernel_h, kernel_w)):
            copy.weight[out, c, row, col] = 1.0
    model.encoder[0] = copy
    bank = fitted_patch_bank(model, train_images)  # chosen as ours is
    return Scorer(model, Reference(train_images, {}, {}, patch_bank=bank), ScoreSpec("patch_knn"))
