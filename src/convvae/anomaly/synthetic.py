"""Anomalies made from a user's own normal images, and the label-free check they give: does the
model's score rank them above the images they were made from?

A folder's test defects are what the score will meet, but a user may have none labelled, and
the defaults were chosen on other folders. Three local corruptions of held-out normal images
(never of training images, whose patches the bank holds), as CutPaste (Li et al. 2021) and
DRAEM (Zavrtanik et al. 2021) make them:

- ``cutpaste``: a rectangle (1/6 to 1/3 of each side) of another normal image pasted elsewhere;
- ``meanfill``: a rectangle filled with its own mean colour (detail missing);
- ``blend``: a smooth random blob (value noise thresholded to 3-15% of the image) where
  another normal image, turned and inverted, shows through at an opacity of 0.5-1.

None of them is a defect kind of the evaluation folders (docs/benchmark/evaluation).
A score that ranks its own folder's synthetic anomalies below chance is unlikely to find its
real ones; the check says so in one line rather than leaving a silent model. It is a warning,
not a guarantee: ranking these well does not promise that real defects rank well
(docs/benchmark/folder-selection: a choice of score made from them was measured and was wrong).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from convvae.metrics.detection import separation_roc_auc
from convvae.metrics.stats import bootstrap_roc_auc

FAMILIES = ("cutpaste", "meanfill", "blend")
# At most this many normal images are corrupted (each once per family): enough for an interval
# of a few points, a few seconds of scoring on the class default.
CHECK_IMAGES = 200


def synthetic_anomalies(images: np.ndarray, family: str, seed: int = 0) -> np.ndarray:
    """One corrupted copy of each uint8 image (N, C, H, W), N >= 1: ``family`` of FAMILIES."""
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic anomaly {family!r}; one of {', '.join(FAMILIES)}")
    rng = np.random.default_rng(seed)
    out = images.copy()
    n, _, height, width = images.shape
    donors = (np.arange(n) + rng.integers(1, max(n, 2), n)) % n  # another image where there is one
    if family == "blend":
        masks = _blobs(rng, n, height, width) * rng.uniform(0.5, 1.0, (n, 1, 1, 1))
        source = 255.0 - np.rot90(images[donors], 2, axes=(2, 3))
        blended = images * (1 - masks) + source * masks
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    for i in range(n):
        top, left, rows, cols = _rectangle(rng, height, width)
        target = out[i, :, top : top + rows, left : left + cols]
        if family == "cutpaste":
            src_top, src_left, _, _ = _rectangle(rng, height, width, (rows, cols))
            target[...] = images[donors[i], :, src_top : src_top + rows, src_left : src_left + cols]
        else:
            target[...] = np.rint(target.reshape(len(target), -1).mean(1))[:, None, None]
    return out


def _rectangle(
    rng: np.random.Generator, height: int, width: int, size: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """(top, left, rows, cols) of a rectangle inside the image: of ``size``, or 1/6 to 1/3 of
    each side (at least 2 pixels)."""
    rows, cols = size or (
        int(rng.integers(max(2, height // 6), max(2, height // 3) + 1)),
        int(rng.integers(max(2, width // 6), max(2, width // 3) + 1)),
    )
    rows, cols = min(rows, height), min(cols, width)
    top, left = rng.integers(0, height - rows + 1), rng.integers(0, width - cols + 1)
    return int(top), int(left), rows, cols


def _blobs(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """(n, 1, H, W) float64 masks in {0, 1}: smooth value noise (a 3-6 cell grid, bicubic)
    above its own quantile, so each covers 3-15% of its image."""
    cells = int(rng.integers(3, 7))
    grid = torch.from_numpy(rng.standard_normal((n, 1, cells + 1, cells + 1)))
    noise = F.interpolate(grid, (height, width), mode="bicubic", align_corners=True).numpy()
    share = rng.uniform(0.03, 0.15, n)
    cut = np.array([np.quantile(field, 1 - s) for field, s in zip(noise, share, strict=True)])
    return (noise >= cut[:, None, None, None]).astype(np.float64)


@dataclass(frozen=True)
class SyntheticCheck:
    """ROC-AUC of synthetic anomalies (every family) against the normal images they were made
    from, with its 95% bootstrap interval, and each family's own ROC-AUC."""

    roc_auc: float
    ci_low: float
    ci_high: float
    per_family: dict[str, float]
    normal_images: int

    def metrics(self) -> dict[str, float]:
        """Flat, for metrics/evaluate.json (``synthetic_anomaly_roc_auc.<key>``)."""
        return {"all": self.roc_auc, "ci_low": self.ci_low, "ci_high": self.ci_high,
                **self.per_family}  # fmt: skip

    def warning(self, score_name: str) -> str | None:
        """One line when the score ranks them below chance; None otherwise."""
        if self.roc_auc >= 0.5:
            return None
        return (
            f"warning: the {score_name} score ranks anomalies made from this data's own normal "
            f"images below chance (ROC-AUC {self.roc_auc:.3f}, 95% interval [{self.ci_low:.3f}, "
            f"{self.ci_high:.3f}], {self.normal_images} validation images), so it may miss real "
            "ones too: compare other scores (anomaly.score in params.yaml; "
            "docs/anomaly-detection.md#anomalies-made-from-your-own-images)"
        )


def synthetic_check(
    score: Callable[[np.ndarray], np.ndarray], normal_images: np.ndarray, seed: int = 0
) -> SyntheticCheck:
    """The check for ``score`` (uint8 images → one score each, higher = more unusual) on up to
    CHECK_IMAGES of ``normal_images`` (held-out normal images: not training images), each
    corrupted once per family."""
    if len(normal_images) < 2:
        raise ValueError(f"need 2+ normal images for the synthetic check, got {len(normal_images)}")
    normal = normal_images[:CHECK_IMAGES]
    normal_scores = score(normal)
    odd = {f: score(synthetic_anomalies(normal, f, seed + k)) for k, f in enumerate(FAMILIES)}
    per_family = {f: separation_roc_auc(normal_scores, values) for f, values in odd.items()}
    pooled = np.concatenate(list(odd.values()))
    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(pooled))]
    low, high = bootstrap_roc_auc(labels, np.r_[normal_scores, pooled], seed=seed)
    roc_auc = separation_roc_auc(normal_scores, pooled)
    return SyntheticCheck(roc_auc, low, high, per_family, len(normal))
