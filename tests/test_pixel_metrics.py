"""Pixel-level localisation metrics: known answers, an exact slow AUPRO reference, the z-score peer.

The reference AUPRO below is the MVTec AD definition written out plainly: label the regions of
each mask with skimage (8-connectivity), loop over every distinct score as a threshold, compute
FPR and the mean per-region overlap, and sum trapezoids up to max_fpr.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label
from sklearn.metrics import average_precision_score, roc_auc_score

from convvae.metrics.pixel import (
    gaussian_zscore_maps,
    pixel_aupro,
    pixel_average_precision,
    pixel_metrics,
    pixel_roc_auc,
)


def reference_aupro(
    maps: np.ndarray, masks: np.ndarray, max_fpr: float, thresholds: np.ndarray | None = None
) -> float:
    """Slow, plain AUPRO: one pass over the images per threshold (every distinct score if None)."""
    masks = masks.astype(bool)
    regions = []
    for i, mask in enumerate(masks):
        labels = label(mask, connectivity=2)
        regions += [(i, labels == r) for r in range(1, labels.max() + 1)]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1] if thresholds is None else np.sort(thresholds)[::-1]:
        above = maps >= t
        xs.append(above[~masks].mean())
        ys.append(np.mean([above[i][region].mean() for i, region in regions]))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:], strict=True):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            x1, y1 = max_fpr, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def blob_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """uint8 (n, size, size) masks of several irregular blobs of very different sizes."""
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 1.5, 1.5))
    return (noise > np.quantile(noise, 0.85)).astype(np.uint8)


def noisy_maps(rng: np.random.Generator, masks: np.ndarray, decimals: int | None) -> np.ndarray:
    """Maps that partly find the defects; rounding makes ties between and within the classes."""
    maps = rng.normal(size=masks.shape) + 1.5 * masks * rng.random(masks.shape)
    return maps if decimals is None else np.round(maps, decimals)


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_matches_the_slow_exact_reference(decimals: int | None, max_fpr: float) -> None:
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, 3, 20)
    maps = noisy_maps(rng, masks, decimals)
    assert label(masks[0], connectivity=2).max() >= 2  # several regions per image
    expected = reference_aupro(maps, masks, max_fpr)
    assert pixel_aupro(maps, masks, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-9)


def test_threshold_grid_matches_the_reference_on_that_grid_and_is_close_to_exact() -> None:
    rng = np.random.default_rng(3)
    masks = blob_masks(rng, 3, 20)
    maps = noisy_maps(rng, masks, None)
    grid = np.linspace(maps.min(), maps.max(), 200)
    on_grid = pixel_aupro(maps, masks, thresholds=200)
    assert on_grid == pytest.approx(reference_aupro(maps, masks, 0.3, grid), abs=1e-9)
    assert on_grid == pytest.approx(pixel_aupro(maps, masks), abs=1e-2)


@pytest.mark.parametrize("dtype", [np.uint8, bool])
def test_perfect_map_scores_one_and_inverted_map_zero(dtype: type) -> None:
    masks = blob_masks(np.random.default_rng(0), 4, 32).astype(dtype)
    perfect = masks.astype(np.float32)
    assert pixel_roc_auc(perfect, masks) == 1.0
    assert pixel_average_precision(perfect, masks) == 1.0
    assert pixel_aupro(perfect, masks) == pytest.approx(1.0, abs=1e-3)
    assert pixel_roc_auc(1 - perfect, masks) == 0.0
    assert pixel_aupro(1 - perfect, masks) == pytest.approx(0.0, abs=1e-3)


def test_random_maps_score_chance() -> None:
    aupros, aucs = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        masks = blob_masks(rng, 4, 64)
        maps = rng.random(masks.shape)
        aupros.append(pixel_aupro(maps, masks))
        aucs.append(pixel_roc_auc(maps, masks))
    assert np.mean(aupros) == pytest.approx(0.15, abs=0.03)
    assert np.mean(aucs) == pytest.approx(0.5, abs=0.03)


def test_a_map_that_ignores_the_image_scores_the_documented_chance_level() -> None:
    masks = blob_masks(np.random.default_rng(1), 2, 32)
    constant = np.zeros(masks.shape)
    assert pixel_aupro(constant, masks) == pytest.approx(0.15, abs=1e-12)
    assert pixel_aupro(constant, masks, max_fpr=0.1) == pytest.approx(0.05, abs=1e-12)
    assert pixel_metrics(constant, masks)["pixel_aupro_chance"] == pytest.approx(0.15)


def test_aupro_weighs_every_region_equally_unlike_roc_auc() -> None:
    """A big detected defect and a small missed one: ROC-AUC ~0.99, AUPRO exactly 0.5."""
    masks = np.zeros((1, 64, 64), dtype=np.uint8)
    masks[0, 2:32, 2:32] = 1  # 900 pixels, found
    masks[0, 50:53, 50:53] = 1  # 9 pixels, missed: scored below every normal pixel
    maps = np.where(masks == 1, 0.0, 0.5) + np.random.default_rng(0).random(masks.shape) * 0.1
    maps[0, 2:32, 2:32] = 1.0
    assert pixel_roc_auc(maps, masks) > 0.98
    assert pixel_aupro(maps, masks) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(
    ("second_image", "expected"),
    [
        (False, 16 / 20),  # a 2x2 square touching the 4x4 corner-to-corner: one 8-connected region
        (True, 0.5),  # the same 2x2 square in another image is a region of its own
    ],
)
def test_regions_are_8_connected_within_an_image_and_never_across(
    second_image: bool, expected: float
) -> None:
    masks = np.zeros((2, 12, 12), dtype=np.uint8)
    masks[0, 2:6, 2:6] = 1  # found
    masks[int(second_image), 6:8, 6:8] = 1  # missed
    maps = np.where(masks == 1, 0.0, 0.5)
    maps[0, 2:6, 2:6] = 1.0
    assert pixel_aupro(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pixel_metrics_reports_every_metric_and_the_chance_levels() -> None:
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 3, 24)
    maps = noisy_maps(rng, masks, None)
    metrics = pixel_metrics(maps, masks)
    assert set(metrics) == {
        "pixel_roc_auc",
        "pixel_aupro",
        "pixel_average_precision",
        "pixel_anomalous_fraction",
        "pixel_aupro_chance",
    }
    assert metrics["pixel_roc_auc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    ap = average_precision_score(masks.ravel(), maps.ravel())
    assert metrics["pixel_average_precision"] == pytest.approx(ap)
    assert metrics["pixel_aupro"] == pytest.approx(reference_aupro(maps, masks, 0.3))
    assert metrics["pixel_anomalous_fraction"] == pytest.approx(masks.mean())
    assert metrics["pixel_aupro_chance"] == pytest.approx(0.15)


@pytest.mark.parametrize(
    "metric", [pixel_roc_auc, pixel_average_precision, pixel_aupro, pixel_metrics]
)
def test_invalid_inputs_raise(metric) -> None:
    masks = blob_masks(np.random.default_rng(2), 2, 16)
    maps = masks.astype(float)
    with pytest.raises(ValueError, match=r"\(2, 16, 16\).*\(2, 16, 15\)"):
        metric(maps, masks[:, :, :15])
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        metric(maps[0], masks[0])
    with pytest.raises(ValueError, match="all 0"):
        metric(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="all 1"):
        metric(maps, np.ones_like(masks))
    with pytest.raises(ValueError, match="0/1"):
        metric(maps, masks * 255)
    with pytest.raises(ValueError, match="NaN"):
        metric(np.where(masks == 1, np.nan, 0.0), masks)


def normal_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """uint8 (n, 3, 16, 16): a fixed smooth pattern plus noise; pixel (0, 0, 0) never varies."""
    pattern = 60 + 120 * np.linspace(0, 1, 16)[None, :, None] * np.linspace(0, 1, 16)[None, None]
    pattern = pattern + np.array([0, 10, 20])[:, None, None]
    images = np.clip(np.round(pattern + rng.normal(0, 8, (n, 3, 16, 16))), 0, 255)
    images[:, 0, 0, 0] = 100
    return images.astype(np.uint8)


def test_zscore_maps_match_the_formula_and_are_near_zero_on_the_mean_image() -> None:
    rng = np.random.default_rng(0)
    train, queries = normal_images(rng, 64), normal_images(rng, 5)
    maps = gaussian_zscore_maps(train, queries)
    assert maps.dtype == np.float32 and maps.shape == (5, 16, 16)
    x = train / 255.0
    z = (queries / 255.0 - x.mean(axis=0)) / (x.std(axis=0) + 1 / 255)
    np.testing.assert_allclose(maps, np.sqrt((z**2).sum(axis=1)), rtol=1e-5, atol=1e-5)
    assert 1.0 < maps.mean() < 2.5  # about sqrt(3) on normal images: three unit z-scores

    mean_image = np.round(train.mean(axis=0))[None].astype(np.uint8)
    assert gaussian_zscore_maps(train, mean_image).max() < 0.3

    one_level_off = mean_image.copy()
    one_level_off[0, 0, 0, 0] = 101  # the constant pixel, one grey level off: z = 1, not inf
    assert gaussian_zscore_maps(train, one_level_off)[0, 0, 0] == pytest.approx(1.0, abs=0.01)


def test_zscore_maps_find_pasted_bright_squares() -> None:
    rng = np.random.default_rng(1)
    train, images = normal_images(rng, 64), normal_images(rng, 8)
    masks = np.zeros((8, 16, 16), dtype=np.uint8)
    for image, mask in zip(images, masks, strict=True):
        y, x = rng.integers(0, 12, 2)
        image[:, y : y + 4, x : x + 4] = 255
        mask[y : y + 4, x : x + 4] = 1
    maps = gaussian_zscore_maps(train, images)
    assert maps[masks == 1].mean() > 5 * maps[masks == 0].mean()
    assert pixel_roc_auc(maps, masks) > 0.9


def test_zscore_maps_reject_mismatched_or_non_uint8_images() -> None:
    train = normal_images(np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match=r"\(4, 3, 16, 16\).*\(4, 1, 16, 16\)"):
        gaussian_zscore_maps(train, train[:, :1])
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        gaussian_zscore_maps(train, train[0])
    with pytest.raises(ValueError, match="uint8"):
        gaussian_zscore_maps(train, train / 255.0)
