"""Scores and maps of numpy images: ``convvae.anomaly.scorer.Scorer`` fed in batches.

Images are uint8 (N, C, H, W), or float in [0, 1] (rounded to 8 bits first). Batches bound
memory by pixels, whatever the image size: a likelihood decodes ``samples + 1`` images per
image (at most ``_DECODED_VALUES`` pixel values at once, about 200 MB of decoder activations);
a map holds a few full-size float64 planes per image; every batch holds at most
``convvae.data.images.FORWARD_BATCH_VALUES`` input pixel values.
"""

from __future__ import annotations

import numpy as np
import torch

from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ELBO_TERMS, LIKELIHOOD_SCORES, MAP_SCORES
from convvae.data.images import as_uint8_images, images_per_batch, to_unit_interval
from convvae.runtime.progress import live_bar

_DECODED_VALUES = 8192 * 28 * 28  # 8,192 decodes of a 28x28 grey image
_MAP_PIXELS = 1 << 20
_MAX_IMAGES_PER_BATCH = 1024


def score_images(scorer: Scorer, images: np.ndarray) -> np.ndarray:
    """The score of ``scorer.spec``, float64 (N,)."""
    return every_score(scorer, images, (scorer.spec.name,))[scorer.spec.name]


def every_score(
    scorer: Scorer, images: np.ndarray, names: tuple[str, ...], progress: bool = False
) -> dict[str, np.ndarray]:
    """The scores (or ELBO terms) ``names``, float64 (N,) each; ``progress``: a bar on a
    terminal."""
    return score_and_map(scorer, images, names, with_map=False, progress=progress)[0]


@torch.no_grad()
def score_and_map(
    scorer: Scorer,
    images: np.ndarray,
    names: tuple[str, ...],
    with_map: bool = True,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The scores ``names`` (float64 (N,) each) and, ``with_map``, the default map of every
    image (float32 (N, H, W)), from one pass: ``patch_knn`` is read off that map."""
    images = as_uint8_images(images)
    likelihood = set(names) & {*LIKELIHOOD_SCORES, *ELBO_TERMS, "fused"}
    maps_needed = with_map or bool(set(names) & set(MAP_SCORES))
    batch = _batch_size(scorer, decodes=bool(likelihood), maps=maps_needed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    maps = [np.zeros((0, *scorer.model.arch.image_size), dtype=np.float32)]
    with live_bar(len(images), "scoring", enabled=progress) as bar:
        for start in range(0, len(images), batch):
            x = to_unit_interval(torch.from_numpy(images[start : start + batch]))
            default_map = scorer.anomaly_map(x) if with_map else None
            for name, values in scorer.scores(x, names, default_map).items():
                parts[name].append(values.numpy())
            if with_map:
                maps.append(default_map.numpy())
            bar.update(len(x))
    scores = {name: np.concatenate(v) if v else np.zeros(0) for name, v in parts.items()}
    return scores, np.concatenate(maps) if with_map else None


@torch.no_grad()
def anomaly_maps(scorer: Scorer, images: np.ndarray, kind: str | None = None) -> np.ndarray:
    """Smoothed maps of ``kind`` (default: the scorer's), float32 (N, H, W)."""
    images = as_uint8_images(images)
    batch = _batch_size(scorer, decodes=False, maps=True)
    parts = [np.zeros((0, *scorer.model.arch.image_size), dtype=np.float32)]
    for start in range(0, len(images), batch):
        x = to_unit_interval(torch.from_numpy(images[start : start + batch]))
        parts.append(scorer.anomaly_map(x, kind).numpy())
    return np.concatenate(parts)


def _batch_size(scorer: Scorer, decodes: bool, maps: bool) -> int:
    """Images per batch: the smallest bound of what the batch computes."""
    channels, height, width = scorer.model.arch.image_shape
    values = channels * height * width
    bounds = [images_per_batch(scorer.model.arch.image_shape, _MAX_IMAGES_PER_BATCH)]
    if decodes:
        bounds.append(_DECODED_VALUES // ((scorer.spec.samples + 1) * values))
    if maps:
        bounds.append(_MAP_PIXELS // (height * width))
    return max(1, min(bounds))
