"""Anomaly metrics against known defects: a folder source's test part (good and defect images,
masks where they exist), measured by the evaluate stage into metrics/anomaly.json.

Image level: ROC-AUC of the model's anomaly score (the ``anomaly`` section's) for good test
images against all defects and against each defect type, beside the model's other scores and
PyOD's KNN and IForest on the same images (default settings, ``convvae.benchmark.peers``). Pixel
level,
on the test images whose defects have masks (and the good ones): ROC-AUC, AUPRO up to a
false-positive rate of 0.3 and average precision of the model's anomaly maps
(``convvae.anomaly.maps.smoothed_maps``), beside its deviance map and the per-pixel Gaussian peer's
z-score maps (its image score: the largest z of an image).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from convvae.anomaly.maps import smoothed_maps
from convvae.anomaly.scores import ScoreSpec, all_scores, map_maxima, require_reference
from convvae.benchmark.peers import run_peer
from convvae.data.images import IMAGE_SUFFIXES, heatmap, heatmap_overlay, image_grid, save_png
from convvae.data.sources import LabelledImages, Splits
from convvae.errors import DataError
from convvae.metrics.pixel import gaussian_zscore_maps, pixel_metrics
from convvae.model.vae import ConvVAE
from convvae.runtime.files import atomic_path

IMAGE_PEERS = ("pyod_knn", "pyod_iforest")
MAP_PEER = "gaussian_zscore"
PIXEL_KEYS = ("pixel_roc_auc", "pixel_aupro", "pixel_average_precision")


def measure_defects(
    model: ConvVAE, splits: Splits, class_names: list[str], spec: ScoreSpec, figure: Path
) -> dict:
    """metrics/anomaly.json's contents: ``defect_metrics`` when the test part holds defects,
    with a figure of the first defect images, their maps and masks; else a one-line note."""
    test = splits.test
    if not (test.labels > 0).any() or class_names[0] != "good":
        return {
            "note": "no defect images in the test split: image and pixel metrics need a folder "
            "source with test/<defect>/ images; the class sources use the one-class benchmark"
        }
    metrics = defect_metrics(model, splits.train.images, test, class_names, spec)
    shown = np.flatnonzero(test.labels > 0)[:8]
    save_map_figure(test.images[shown], smoothed_maps(model, test.images[shown]),
                    None if test.masks is None else test.masks[shown], figure)  # fmt: skip
    return metrics


def save_map_figure(
    images: np.ndarray, maps: np.ndarray, masks: np.ndarray | None, path: Path
) -> None:
    """A PNG with one column per image: the image, its anomaly map over it, the map alone,
    and its mask."""
    high = float(np.quantile(maps, 0.99)) if maps.size else 1.0
    rows = [
        images,
        np.stack([heatmap_overlay(i, m, high) for i, m in zip(images, maps, strict=True)]),
        np.stack([heatmap(m, high) for m in maps]),
    ]
    if masks is not None:
        rows.append(np.repeat(masks[:, None] * 255, images.shape[1], axis=1).astype(np.uint8))
    as_rgb = [np.repeat(r, 3, axis=1) if r.shape[1] == 1 else r for r in rows]
    stacked = torch.from_numpy(np.concatenate(as_rgb)).float() / 255
    save_png(image_grid(stacked, nrow=len(images)), path)


def defect_metrics(
    model: ConvVAE,
    train_images: np.ndarray,
    test: LabelledImages,
    class_names: list[str],
    spec: ScoreSpec,
    seed: int = 0,
) -> dict:
    """Flat metrics (keys as ``image_roc_auc.<defect>``, ``pyod_knn.image_roc_auc``): see the
    module docstring. ``test.labels``: 0 good, i > 0 defect type ``class_names[i]``.

    ``image_roc_auc`` is the model's score (``spec``); ``<score>.image_roc_auc`` gives every
    other score of the same model beside it, ``deviance_map.pixel_*`` the deviance map beside
    the default map: ablations, not choices (the defaults were fixed before, README)."""
    defective = (test.labels > 0).astype(int)
    # Every score and the default map below compare with it, whatever the model's score.
    require_reference(model, "the defect maps (feature_knn)", likelihood_will_do=False)
    # The default map (feature kNN), computed once: patch_knn is its maximum.
    maps = smoothed_maps(model, test.images, "feature_knn")
    every = all_scores(model, test.images, spec.samples, spec.noise_seed)
    every["patch_knn"] = map_maxima(maps)
    scores = every[spec.name]
    metrics: dict = {
        "score": spec.name,
        "test_good_images": int((defective == 0).sum()),
        "test_defective_images": int(defective.sum()),
        "image_average_precision_chance": float(defective.mean()),
        **_image_metrics(defective, scores, test.labels, class_names),
    }
    for name, values in every.items():
        metrics[f"{name}.image_roc_auc"] = float(roc_auc_score(defective, values))
    for peer in IMAGE_PEERS:
        found = run_peer(peer, train_images, {"test": test.images}, seed)
        metrics[f"{peer}.image_roc_auc"] = float(roc_auc_score(defective, found.scores["test"]))
        metrics[f"{peer}.seconds"] = found.fit_seconds + found.score_seconds
    peer_maps = gaussian_zscore_maps(train_images, test.images)
    peer_scores = peer_maps.max(axis=(1, 2))  # an image is as anomalous as its worst pixel
    metrics[f"{MAP_PEER}.image_roc_auc"] = float(roc_auc_score(defective, peer_scores))
    maps = {
        "": maps,
        "deviance_map.": smoothed_maps(model, test.images, "deviance"),
        f"{MAP_PEER}.": peer_maps,
    }
    metrics.update(_pixel_metrics(maps, test))
    return metrics


def _image_metrics(
    defective: np.ndarray, scores: np.ndarray, labels: np.ndarray, names: list[str]
) -> dict[str, float]:
    metrics = {
        "image_roc_auc": float(roc_auc_score(defective, scores)),
        "image_average_precision": float(average_precision_score(defective, scores)),
    }
    good = labels == 0
    for label, name in enumerate(names[1:], start=1):
        this = labels == label
        if this.any():
            chosen = good | this
            key = f"image_roc_auc.{name}"
            metrics[key] = float(roc_auc_score(this[chosen].astype(int), scores[chosen]))
    return metrics


def _pixel_metrics(maps: dict[str, np.ndarray], test: LabelledImages) -> dict:
    # Good images and the defect images whose mask says where: a defect without a mask file
    # would count its defect pixels as normal ones.
    if test.masks is None or not (test.mask_known & (test.labels > 0)).any():
        return {"pixel_metrics": "no defect image has a mask in ground_truth/"}
    usable = test.mask_known
    metrics: dict = {"pixel_images": int(usable.sum())}
    for prefix, values in maps.items():
        found = pixel_metrics(values[usable], test.masks[usable])
        if prefix:  # the chance levels and the defect share are the same for every map
            found = {key: found[key] for key in PIXEL_KEYS}
        metrics.update({prefix + key: value for key, value in found.items()})
    return metrics


def map_scale(model: ConvVAE) -> float:
    """The map value drawn fully hot in overlays: the 99.9th percentile of the maps of (up to
    256 of) the model's normal reference images, so colour means "hotter than almost every
    normal pixel", the same for every image."""
    if model.reference is None:
        return 1.0
    return float(np.quantile(smoothed_maps(model, model.reference.images[:256]), 0.999))


def map_stem(name: str) -> str:
    """The map files' stem for an image name: a.png → a (a.npz[3] → a.npz_3)."""
    suffix = Path(name).suffix
    base = name[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else name  # a.npz[3] stays
    return re.sub(r"[^\w.-]+", "_", base).strip("_") or "image"


def check_map_names(names: list[str]) -> None:
    """Refuse, before any work, image names whose maps would overwrite each other (a.png and
    a.bmp both write a_map.png)."""
    first: dict[str, str] = {}
    for name in names:
        stem = map_stem(name)
        if stem in first:
            raise DataError(
                f"{first[stem]} and {name} would both write {stem}_map.png and {stem}_map.npy; "
                "rename one, or score without --maps"
            )
        first[stem] = name


def write_maps(
    model: ConvVAE, images: np.ndarray, names: list[str], folder: str | Path, high: float
) -> None:
    """Per image, ``<name>_map.png`` (the map over the image, fully hot at ``high``: pass
    ``map_scale(model)``, computed once for every batch) and ``<name>_map.npy`` (float32
    (H, W), the raw smoothed map) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    maps = smoothed_maps(model, images)
    for image, heat, name in zip(images, maps, names, strict=True):
        stem = map_stem(name)
        save_png(heatmap_overlay(image, heat, high), folder / f"{stem}_map.png")
        with atomic_path(folder / f"{stem}_map.npy") as tmp, tmp.open("wb") as file:
            np.save(file, heat.astype(np.float32))
