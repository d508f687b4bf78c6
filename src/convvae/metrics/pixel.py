"""Pixel-level anomaly-localisation metrics, as the MVTec AD benchmark defines them.

An anomaly map scores every pixel (higher = more anomalous); a ground-truth mask marks the
anomalous pixels (1) of each image. All pixels of all images are pooled:

- ``pixel_roc_auc``: ROC-AUC of the pixel scores against the mask. Large defects dominate it: a
  map that finds one big defect and misses every small one still scores near 1.
- ``pixel_average_precision``: average precision, anomalous pixels positive. Its chance level is
  the share of anomalous pixels (``pixel_anomalous_fraction``), not 0.5.
- ``pixel_aupro``: area under the per-region-overlap curve up to a false-positive rate of 0.3,
  normalised to [0, 1] (Bergmann et al. 2021, "The MVTec Anomaly Detection Dataset", IJCV). Every
  connected defect region counts equally, whatever its size, which is why MVTec reports it.

The PRO curve is computed exactly by default: one sort of all pixel scores, every distinct score a
threshold (the MVTec reference samples a fixed number of evenly spaced thresholds instead; pass
``thresholds=`` to reproduce that).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "GREY_LEVEL_EPS",
    "gaussian_zscore_maps",
    "pixel_aupro",
    "pixel_average_precision",
    "pixel_metrics",
    "pixel_roc_auc",
]

DEFAULT_MAX_FPR = 0.3
# The std floor of ``gaussian_zscore_maps``: one grey level in [0, 1] units, so a pixel that is
# constant over the training images gives a z of 1 per grey level of change, not infinity.
GREY_LEVEL_EPS = 1.0 / 255.0
# 8-connectivity within each image, none across images: one label call for the (N, H, W) stack.
_IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[1] = True


def _validated(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check (N, H, W) maps and 0/1 masks of one shape; return float maps and bool masks.

    Both classes must be present: with no anomalous (or no normal) pixel every metric here is
    undefined, and returning a number would hide a wrong mask path or threshold.
    """
    maps, masks = np.asarray(maps), np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(
            f"maps and masks must both be (N, H, W) arrays of one shape; got maps {maps.shape} "
            f"and masks {masks.shape}"
        )
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite scores")
    if masks.dtype != bool:
        if not ((masks == 0) | (masks == 1)).all():
            raise ValueError(
                "masks must be 0/1 or bool; binarise them first (e.g. mask > 127 for 0/255 PNGs)"
            )
        masks = masks != 0
    n_anomalous = int(np.count_nonzero(masks))
    if n_anomalous == 0:
        raise ValueError("masks are all 0: no anomalous pixel, so the pixel metrics are undefined")
    if n_anomalous == masks.size:
        raise ValueError("masks are all 1: no normal pixel, so the pixel metrics are undefined")
    return maps, masks


def pixel_roc_auc(maps: np.ndarray, masks: np.ndarray) -> float:
    """ROC-AUC of all pixels pooled, anomalous pixels positive."""
    maps, masks = _validated(maps, masks)
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def pixel_average_precision(maps: np.ndarray, masks: np.ndarray) -> float:
    """Average precision of all pixels pooled; chance level is the share of anomalous pixels."""
    maps, masks = _validated(maps, masks)
    return float(average_precision_score(masks.ravel(), maps.ravel()))


def _suffix_sums(scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort scores ascending; entry i of the sums is the total weight of sorted scores i..end.

    The sums end with a 0 (nothing is above the highest score), so ``sums[searchsorted(...)]`` is
    the weight at or above any threshold.
    """
    order = np.argsort(scores)
    sums = np.r_[np.cumsum(weights[order][::-1])[::-1], 0.0]
    return scores[order], sums


def _pro_curve(
    maps: np.ndarray, masks: np.ndarray, thresholds: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """FPR and PRO at each threshold, from the highest threshold down, from (0, 0) to (1, 1).

    PRO(t) = sum over anomalous pixels with score >= t of 1 / (n_regions * size of their region),
    so sorted scores and suffix sums give the curve at every threshold without a per-threshold
    loop. Only the normal pixels (usually nearly all of them) need a full sort, not an argsort.

    Exact curve: between two consecutive distinct anomalous scores only normal pixels cross the
    threshold, a horizontal run of the curve, so the points just above and at each distinct
    anomalous score trace the whole curve (every distinct score as a threshold) exactly.
    """
    labels, n_regions = ndimage.label(masks, structure=_IN_PLANE_8)
    region = labels[masks]
    sizes = np.bincount(region, minlength=n_regions + 1)
    anomalous, pro_sums = _suffix_sums(maps[masks], 1.0 / (n_regions * sizes[region]))
    normal = np.sort(maps[~masks], axis=None)

    def fpr_pro(t: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
        """FPR and PRO at thresholds t: scores >= t for side 'left', > t for side 'right'."""
        fpr = (normal.size - np.searchsorted(normal, t, side=side)) / normal.size
        return fpr, pro_sums[np.searchsorted(anomalous, t, side=side)] / pro_sums[0]

    if thresholds is None:
        distinct = np.unique(anomalous)[::-1]
        (fpr_gt, pro_gt), (fpr_ge, pro_ge) = fpr_pro(distinct, "right"), fpr_pro(distinct, "left")
        fpr = np.stack([fpr_gt, fpr_ge], axis=1).ravel()
        pro = np.stack([pro_gt, pro_ge], axis=1).ravel()
    else:
        if thresholds < 2:
            raise ValueError(f"thresholds must be None (exact) or at least 2; got {thresholds}")
        grid = np.linspace(min(normal[0], anomalous[0]), max(normal[-1], anomalous[-1]), thresholds)
        fpr, pro = fpr_pro(grid[::-1], "left")
    return np.r_[0.0, fpr, 1.0], np.r_[0.0, pro, 1.0]


def _area_up_to(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> float:
    """Trapezoid area under a curve with non-decreasing fpr, from 0 to exactly max_fpr."""
    inside = int(np.searchsorted(fpr, max_fpr, side="right"))  # points with fpr <= max_fpr
    x, y = fpr[:inside], pro[:inside]
    if inside < fpr.size and x[-1] < max_fpr:
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        x = np.r_[x, max_fpr]
        y = np.r_[y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)]
    return float(np.trapezoid(y, x))


def pixel_aupro(
    maps: np.ndarray,
    masks: np.ndarray,
    max_fpr: float = DEFAULT_MAX_FPR,
    thresholds: int | None = None,
) -> float:
    """Normalised area under the per-region-overlap curve for FPR in [0, max_fpr] (MVTec AD).

    PRO(t) is the mean, over every 8-connected region of the masks (all images), of the fraction
    of the region's pixels with score >= t; FPR(t) is the fraction of normal pixels with score
    >= t. The curve is integrated by trapezoids up to exactly max_fpr (interpolated there) and
    divided by max_fpr, so a perfect map scores 1 and a map that ignores the image max_fpr / 2.

    ``thresholds=None`` (default) uses every distinct score: exact, and no slower than a grid,
    since both need one sort. An int uses that many evenly spaced thresholds between the lowest and
    highest score, as the MVTec reference does; it is coarse when scores are skewed.
    """
    maps, masks = _validated(maps, masks)
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1]; got {max_fpr}")
    fpr, pro = _pro_curve(maps, masks, thresholds)
    return _area_up_to(fpr, pro, max_fpr) / max_fpr


def pixel_metrics(
    maps: np.ndarray, masks: np.ndarray, max_fpr: float = DEFAULT_MAX_FPR
) -> dict[str, float]:
    """All pixel metrics of one set of maps, with the chance levels that make them readable.

    ``pixel_anomalous_fraction`` is the AP of a map unrelated to the image. ``pixel_aupro_chance``
    is the AUPRO of such a map: a random or constant map has PRO(t) = FPR(t) in expectation (every
    region, like the normal pixels, is above t in the same proportion), so the area up to max_fpr
    is max_fpr**2 / 2, normalised max_fpr / 2 (0.15 at the default 0.3), not 0.5.
    """
    maps, masks = _validated(maps, masks)
    return {
        "pixel_roc_auc": pixel_roc_auc(maps, masks),
        "pixel_aupro": pixel_aupro(maps, masks, max_fpr=max_fpr),
        "pixel_average_precision": pixel_average_precision(maps, masks),
        "pixel_anomalous_fraction": float(np.count_nonzero(masks) / masks.size),
        "pixel_aupro_chance": max_fpr / 2.0,
    }


def _grey_level_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and (population) std in [0, 1] units, from integer sums in chunks.

    Sums of uint8 values and their squares are exact in float64, so E[x^2] - E[x]^2 does not
    cancel, and no float copy of the whole training set is made.
    """
    total = np.zeros(images.shape[1:])
    total_sq = np.zeros(images.shape[1:])
    for start in range(0, len(images), 256):
        chunk = images[start : start + 256].astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    n = len(images)
    mean = total / n
    var = np.maximum(total_sq / n - np.square(mean), 0.0)
    return mean / 255.0, np.sqrt(var) / 255.0


def gaussian_zscore_maps(train_images: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per-pixel Gaussian anomaly maps: the simplest peer a learned localiser must beat.

    Fits a mean and std per pixel and channel on uint8 (N, C, H, W) normal training images; the map
    of a query image is sqrt(sum over channels of z^2), z = (x - mean) / (std + 1/255), in [0, 1]
    units. The 1/255 floor (one grey level) keeps pixels that never vary in training finite.
    Returns float32 (M, H, W).
    """
    train_images, images = np.asarray(train_images), np.asarray(images)
    if train_images.ndim != 4 or images.ndim != 4 or train_images.shape[1:] != images.shape[1:]:
        raise ValueError(
            "train_images and images must be (N, C, H, W) and (M, C, H, W) with the same C, H, W; "
            f"got {train_images.shape} and {images.shape}"
        )
    if train_images.dtype != np.uint8 or images.dtype != np.uint8:
        raise ValueError(
            "train_images and images must be uint8 (the std floor is one grey level); "
            f"got {train_images.dtype} and {images.dtype}"
        )
    if len(train_images) == 0:
        raise ValueError("train_images is empty")
    mean, std = _grey_level_moments(train_images)
    mean, scale = mean.astype(np.float32), (1.0 / (std + GREY_LEVEL_EPS)).astype(np.float32)
    maps = np.empty((len(images), *images.shape[2:]), dtype=np.float32)
    for start in range(0, len(images), 256):
        z = (images[start : start + 256].astype(np.float32) / 255.0 - mean) * scale
        maps[start : start + 256] = np.sqrt(np.square(z).sum(axis=1))
    return maps
