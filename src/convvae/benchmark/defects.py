"""Anomaly metrics against known defects: a folder source's test part (good and defect images,
masks where they exist), measured by the evaluate stage into metrics/defects.json.

Image level: ROC-AUC of the model's anomaly score (the ``anomaly`` section's) for good test
images against all defects and against each defect type, beside the model's other scores and
PyOD's KNN and IForest on the same images (default settings, ``convvae.benchmark.peers``). Pixel
level, on the test images whose defects have masks (and the good ones): ROC-AUC, AUPRO up to a
false-positive rate of 0.3 and average precision of the model's anomaly maps
(the scorer's default map), beside its deviance map and the per-pixel Gaussian peer's
z-score maps (its image score: the largest z of an image). The ablations
(``convvae.benchmark.ablations``: the untrained network, the patch search on raw pixels) are
measured the same way, and ``margin_over_vae_free.image_roc_auc`` is the default's ROC-AUC
minus the best of the methods that need no trained VAE, with a paired bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from convvae.anomaly.map_images import save_map_figure
from convvae.anomaly.scorer import Scorer, require_reference
from convvae.anomaly.scores import MAP_SCORES, SCORES
from convvae.anomaly.scoring import anomaly_maps, score_and_map
from convvae.benchmark.ablations import VAE_FREE
from convvae.benchmark.peers import run_peer
from convvae.data.sources import LabelledImages
from convvae.data.splits import Splits
from convvae.metrics.pixel import gaussian_zscore_maps, pixel_metrics
from convvae.metrics.stats import roc_auc_difference

IMAGE_PEERS = ("pyod_knn", "pyod_iforest")
MAP_PEER = "gaussian_zscore"
PIXEL_KEYS = ("pixel_roc_auc", "pixel_aupro", "pixel_average_precision")


def measure_defects(
    scorer: Scorer,
    splits: Splits,
    class_names: list[str],
    figure: Path,
    ablations: Callable[[], dict[str, Scorer]] = dict,
) -> dict:
    """metrics/defects.json's contents: ``defect_metrics`` when the test part holds defects,
    with a figure of the first defect images, their maps and masks; else a one-line note.
    ``ablations`` builds the ablation scorers, only when there are defects to measure."""
    test = splits.test
    if not (test.labels > 0).any() or class_names[0] != "good":
        return {
            "note": "no defect images in the test split: image and pixel metrics need a folder "
            "source with test/<defect>/ images; the class sources use the one-class benchmark"
        }
    metrics = defect_metrics(scorer, splits.train.images, test, class_names, ablations())
    shown = np.flatnonzero(test.labels > 0)[:8]
    masks = None if test.masks is None else test.masks[shown]
    save_map_figure(test.images[shown], anomaly_maps(scorer, test.images[shown]), masks, figure)
    return metrics


def defect_metrics(
    scorer: Scorer,
    train_images: np.ndarray,
    test: LabelledImages,
    class_names: list[str],
    ablations: dict[str, Scorer] | None = None,
    seed: int = 0,
) -> dict:
    """Flat metrics (keys as ``image_roc_auc.<defect>``, ``pyod_knn.image_roc_auc``): see the
    module docstring. ``test.labels``: 0 good, i > 0 defect type ``class_names[i]``.

    ``image_roc_auc`` is the scorer's score; ``<score>.image_roc_auc`` gives every other score
    of the same model beside it, ``deviance_map.pixel_*`` the deviance map beside the default
    map: ablations, not choices (the defaults were fixed before: docs/your-own-images.md)."""
    defective = (test.labels > 0).astype(int)
    # Every score and the default map below compare with it, whatever the model's score.
    require_reference(scorer.reference, "the defect maps (feature_knn)", likelihood_will_do=False)
    # The default map (feature kNN), computed once: patch_knn is its maximum.
    every, maps = score_and_map(scorer, test.images, (*SCORES, *MAP_SCORES))
    scores = every[scorer.spec.name]
    metrics: dict = {
        "score": scorer.spec.name,
        "test_good_images": int((defective == 0).sum()),
        "test_defective_images": int(defective.sum()),
        "image_average_precision_chance": float(defective.mean()),
        **_image_metrics(defective, scores, test.labels, class_names),
    }
    image_scores = dict(every)
    for peer in IMAGE_PEERS:
        found = run_peer(peer, train_images, {"test": test.images}, seed)
        image_scores[peer] = found.scores["test"]
        metrics[f"{peer}.seconds"] = found.fit_seconds + found.score_seconds
    peer_maps = gaussian_zscore_maps(train_images, test.images)
    image_scores[MAP_PEER] = peer_maps.max(axis=(1, 2))  # as anomalous as its worst pixel
    maps = {
        "": maps,
        "deviance_map.": anomaly_maps(scorer, test.images, "deviance"),
        f"{MAP_PEER}.": peer_maps,
    }
    for name, ablation in (ablations or {}).items():
        found, maps[f"{name}."] = score_and_map(ablation, test.images, (ablation.spec.name,))
        image_scores[name] = found[ablation.spec.name]
    for name, values in image_scores.items():
        metrics[f"{name}.image_roc_auc"] = float(roc_auc_score(defective, values))
    default = scorer.spec.name
    metrics.update(_margin_over_vae_free(defective, default, image_scores, seed))
    metrics.update(_pixel_metrics(maps, test))
    return metrics


def _margin_over_vae_free(
    defective: np.ndarray, default: str, image_scores: dict[str, np.ndarray], seed: int
) -> dict:
    """The default's image ROC-AUC minus the best of the other methods that need no trained
    VAE, with a paired bootstrap interval over the test images."""
    aucs = {
        name: roc_auc_score(defective, values)
        for name, values in image_scores.items()
        if name in VAE_FREE and name != default
    }
    best = max(aucs, key=aucs.get)
    margin = roc_auc_difference(defective, image_scores[default], image_scores[best], seed=seed)
    return {
        "vae_free_best": best,
        "margin_over_vae_free.image_roc_auc": margin.difference,
        "margin_over_vae_free.ci_low": margin.ci_low,
        "margin_over_vae_free.ci_high": margin.ci_high,
    }


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
