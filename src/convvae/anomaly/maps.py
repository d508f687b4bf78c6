"""Where an image is anomalous: per-pixel anomaly maps of a ConvVAE, float32 (N, H, W), higher
is more anomalous. Every output that shows a map (evaluate's figure and pixel metrics,
`convvae score --maps`, the served ``anomaly_map``) calls ``smoothed_maps``.

Two maps:

- ``deviance``: per pixel, the NLL of the image under its reconstruction from the posterior
  mean minus the likelihood family's floor (``convvae.model.likelihood.pixel_floor``), summed over
  channels: each pixel's share of the deviance behind ``excess_nll``. Works for every
  likelihood, needs nothing but the model; blurry where the decoder cannot draw fine texture.
- ``feature_knn``: per position of the encoder's first convolution (a 4x4 patch, stride 2), the
  distance of its feature vector to the nearest feature vector of the normal reference images at
  any position (a patch nearest-neighbour density, position-free so that textures work),
  upsampled bilinearly to the image size. Needs the model's Reference. The default wherever
  the model has one; its maximum over the smoothed map is the ``patch_knn`` image score.

The default was chosen on held-out normal texture tiles with synthetic defects (cut-paste
patches, colour blobs), never on test images (README, "Your own images"): feature_knn found
them far better than the deviance (pixel ROC-AUC 0.74-0.96 against 0.36-0.58 on four textures)
and than the mean of the two standardised maps (0.71-0.93).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn.functional as F

from convvae.data.images import as_uint8_images, to_unit_interval
from convvae.metrics.pixel import smooth_maps
from convvae.model.likelihood import pixel_floor
from convvae.model.vae import ConvVAE

MAP_KINDS = ("deviance", "feature_knn")
# Reference patch features kept for the nearest-neighbour search (a seeded random subset): the
# search then costs about 2 * 65536 * C flops per position whatever the reference's size.
FEATURE_BANK_SIZE = 65536
_QUERY_CHUNK = 512  # queries x bank float32 distances: 128 MB at a full bank
_BANKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def map_sigma(image_size: tuple[int, int]) -> float:
    """Smoothing of every shown map, fixed before any test image is seen: 1/64 of the longer
    side (4 pixels at 256, anomalib's and PatchCore's usual blur at that size)."""
    return max(image_size) / 64


def smoothed_maps(model: ConvVAE, images: np.ndarray, kind: str | None = None) -> np.ndarray:
    """``anomaly_maps`` smoothed by a Gaussian of ``map_sigma`` pixels: what outputs show."""
    return smooth_maps(anomaly_maps(model, images, kind), map_sigma(model.arch.image_size))


def anomaly_maps(model: ConvVAE, images: np.ndarray, kind: str | None = None) -> np.ndarray:
    """Maps of ``kind`` (default: ``feature_knn`` where the model has a Reference, else
    ``deviance``) for uint8 images (N, C, H, W), or float in [0, 1]."""
    images = as_uint8_images(images)
    kind = kind or ("feature_knn" if model.reference is not None else "deviance")
    if kind == "deviance":
        return deviance_maps(model, images)
    if kind == "feature_knn":
        return feature_knn_maps(model, images)
    raise ValueError(f"unknown map {kind!r}; one of {', '.join(MAP_KINDS)}")


@torch.no_grad()
def deviance_maps(model: ConvVAE, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Per-pixel deviance, summed over channels, >= 0 (module docstring), for uint8 images."""
    model.eval()
    parts = [np.zeros((0, *model.arch.image_size), dtype=np.float32)]
    for start in range(0, len(images), batch_size):
        x = to_unit_interval(torch.from_numpy(images[start : start + batch_size]))
        mu, _ = model.encode(x)
        deviance = model.pixel_nll(model.decode(mu), x) - pixel_floor(model.arch.likelihood, x)
        parts.append(deviance.sum(1).clamp_min(0).numpy())
    return np.concatenate(parts)


@torch.no_grad()
def patch_features(model: ConvVAE, images: np.ndarray) -> torch.Tensor:
    """The encoder's first convolution (and its ReLU) of uint8 images: (N, C', H', W')."""
    model.eval()
    first_layers = model.encoder[:2]  # Conv2d, ReLU
    return torch.cat(
        [
            first_layers(to_unit_interval(torch.from_numpy(images[i : i + 256])))
            for i in range(0, len(images), 256)
        ]
        or [torch.zeros(0)]
    )


@torch.no_grad()
def feature_knn_maps(model: ConvVAE, images: np.ndarray) -> np.ndarray:
    """Nearest-neighbour distance of every patch feature to the reference's bank, upsampled to
    (N, H, W) (module docstring). Each query's distance depends on it and the bank only."""
    if len(images) == 0:
        return np.zeros((0, *model.arch.image_size), dtype=np.float32)
    features = patch_features(model, images)
    n, channels, height, width = features.shape
    queries = features.permute(0, 2, 3, 1).reshape(-1, channels)
    nearest = torch.cat(
        [
            nearest_distance(queries[i : i + _QUERY_CHUNK], _feature_bank(model))
            for i in range(0, len(queries), _QUERY_CHUNK)
        ]
    )
    grid = nearest.view(n, 1, height, width)
    upsampled = F.interpolate(
        grid, size=model.arch.image_size, mode="bilinear", align_corners=False
    )
    return upsampled[:, 0].float().numpy()


def nearest_distance(
    queries: torch.Tensor, bank64: torch.Tensor, block: int = 1024
) -> torch.Tensor:
    """Euclidean distance of each query (M, C) to its nearest bank row, float64 (M,). The
    nearest row is found by float64 matrix products over blocks of the bank (|b|^2 - 2 q.b; a
    block's distances stay in cache: three times faster than one cdist; float64, as float32's
    cancellation picks the wrong row among patches a hair apart), and its distance recomputed
    directly, so a query's value does not depend on which other queries share its batch."""
    norms = bank64.pow(2).sum(1)
    best_value = torch.full((len(queries),), float("inf"), dtype=torch.float64)
    best_index = torch.zeros(len(queries), dtype=torch.long)
    q = queries.double()
    for start in range(0, len(bank64), block):
        partial = torch.addmm(norms[start : start + block], q, bank64[start : start + block].T,
                              alpha=-2)  # fmt: skip
        value, index = partial.min(dim=1)
        better = value < best_value
        best_value = torch.where(better, value, best_value)
        best_index = torch.where(better, index + start, best_index)
    return (q - bank64[best_index]).pow(2).sum(1).sqrt()


def _feature_bank(model: ConvVAE) -> torch.Tensor:
    reference = model.reference
    if reference is None:
        raise ValueError("feature_knn maps need the model's Reference (fit_reference)")
    if reference not in _BANKS:
        features = patch_features(model, reference.images)
        bank = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        if len(bank) > FEATURE_BANK_SIZE:
            keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))
            bank = bank[keep[:FEATURE_BANK_SIZE]]
        _BANKS[reference] = bank.double().contiguous()
    return _BANKS[reference]
