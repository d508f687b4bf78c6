"""Out-of-domain inputs: images no normal class looks like, made from the test images and from
nothing at all, so the check needs no download. Each set's AUROC against the normal test images
says whether the model's anomaly score flags it (1.0: every such image above every normal one).

The score is the scorer's ordinary one (``score_images``): nothing here is special-cased.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scoring import score_images


def out_of_domain_sets(images: np.ndarray, n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Sets of ``n`` uint8 images shaped like ``images`` (N, C, H, W): blank (all 0) and
    saturated (all 255) frames, uniform noise, and copies of the first ``n`` images inverted,
    flipped left-right and flipped upside down."""
    rng = np.random.default_rng(seed)
    sample = images[:n]
    shape = (len(sample), *images.shape[1:])
    return {
        "blank": np.zeros(shape, np.uint8),
        "saturated": np.full(shape, 255, np.uint8),
        "uniform_noise": rng.integers(0, 256, shape, dtype=np.uint8),
        "inverted": 255 - sample,
        "flipped_left_right": np.ascontiguousarray(sample[..., ::-1]),
        "flipped_upside_down": np.ascontiguousarray(sample[..., ::-1, :]),
    }


def out_of_domain_auroc(
    scorer: Scorer, normal_images: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """ROC-AUC of each out-of-domain set (positive) against ``normal_images`` (uint8, the test
    images the model should find normal) under the scorer's score."""
    normal = score_images(scorer, normal_images)
    result = {}
    for name, images in out_of_domain_sets(normal_images, seed=seed).items():
        odd = score_images(scorer, images)
        labels = np.r_[np.zeros(len(normal)), np.ones(len(odd))]
        result[name] = float(roc_auc_score(labels, np.r_[normal, odd]))
    return result
