"""Out-of-domain inputs: images no normal class looks like, made from the test images and from
nothing at all, so the check needs no download. Each set's AUROC against the normal test images
says whether the model's anomaly score flags it (1.0: every such image above every normal one).

The score is the scorer's ordinary one (``score_images``): nothing here is special-cased.
"""

from __future__ import annotations

import numpy as np

from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scoring import score_images
from convvae.metrics.detection import separation_roc_auc


def out_of_domain_sets(images: np.ndarray, n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Sets of ``n`` uint8 images shaped like ``images`` (N, C, H, W): blank (all 0) and
    saturated (all 255) frames; flat frames of random brightness (and colour); nearly flat ones
    (what a covered or failed camera sends: flat plus faint noise, a gentle ramp or a faint
    blob); uniform noise; and copies of the first ``n`` images inverted, flipped left-right and
    flipped upside down."""
    rng = np.random.default_rng(seed)
    sample = images[:n]
    shape = (len(sample), *images.shape[1:])
    return {
        "blank": np.zeros(shape, np.uint8),
        "saturated": np.full(shape, 255, np.uint8),
        "flat": _flat(shape, rng).astype(np.uint8),
        "nearly_flat": nearly_flat(shape, rng),
        "uniform_noise": rng.integers(0, 256, shape, dtype=np.uint8),
        "inverted": 255 - sample,
        "flipped_left_right": np.ascontiguousarray(sample[..., ::-1]),
        "flipped_upside_down": np.ascontiguousarray(sample[..., ::-1, :]),
    }


def _flat(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Frames of one random level per frame and channel, float64 (N, C, H, W)."""
    levels = rng.integers(0, 256, (shape[0], shape[1], 1, 1)).astype(np.float64)
    return np.broadcast_to(levels, shape).copy()


def nearly_flat(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Flat frames with one faint disturbance each, uint8 (N, C, H, W): Gaussian noise of 1-4
    grey levels, a ramp across the frame of 5-20 levels, or a blob of 5-15 levels."""
    frames = _flat(shape, rng)
    height, width = shape[-2:]
    rows, cols = np.mgrid[:height, :width]
    for frame in frames:
        kind = rng.integers(3)
        if kind == 0:
            frame += rng.normal(0, rng.uniform(1, 4), frame.shape)
        elif kind == 1:
            frame += np.linspace(-1, 1, width)[None, None, :] * rng.uniform(5, 20)
        else:
            centre_row, centre_col = rng.uniform(0, height), rng.uniform(0, width)
            radius2 = (height * width) / 20
            blob = np.exp(-((rows - centre_row) ** 2 + (cols - centre_col) ** 2) / radius2)
            frame += rng.uniform(5, 15) * blob[None]
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def out_of_domain_auroc(
    scorer: Scorer, normal_images: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """ROC-AUC of each out-of-domain set (positive) against ``normal_images`` (uint8, the test
    images the model should find normal) under the scorer's score."""
    normal = score_images(scorer, normal_images)
    result = {}
    for name, images in out_of_domain_sets(normal_images, seed=seed).items():
        result[name] = separation_roc_auc(normal, score_images(scorer, images))
    return result
