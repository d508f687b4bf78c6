"""Which normal images calibrate a threshold, and what the threshold then promises.

- ``split``: the calibration half of the validation images (never trained on, never used for
  early stopping or the fused statistics): split conformal, exact when those images are
  exchangeable with future normal images. Cheap, and enough where data is plentiful.
- ``cross_fit``: every normal image the stage holds (training and validation), each scored by a
  model trained without it: the images are cut into ``folds`` parts, a model is trained (the same
  recipe) on all parts but one and scores that one. A small folder thus calibrates on all its
  images instead of a handful. The deployed model is the one trained on the training split; its
  scores of new normal images are treated as exchangeable with the out-of-fold scores, which is
  approximate (the fold models saw a little less data), so the promise is measured rather than
  proved (docs/anomaly-detection.md, docs/benchmark/calibration).
- ``auto``: split where the calibration half can reach ``target_fpr`` (1 / (n + 1) <= target),
  else cross_fit.

Either way the guarantee is marginal: the false-positive rate is at most the target *on average
over calibration sets*. One deployed threshold's rate varies around it: for n calibration scores
and rank r it follows Beta(n + 1 - r, r) (``fpr_spread``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import score_and_map
from convvae.anomaly.thresholds import (
    ThresholdRecord,
    achievable_fpr,
    calibrate,
    make_record,
    map_scale_of,
)
from convvae.config import AnomalyConfig, ModelConfig, TrainConfig
from convvae.data.splits import selection_and_calibration


@dataclass(frozen=True)
class CalibrationPlan:
    """How a threshold will be calibrated, and on how many normal images' scores."""

    method: str  # split | cross_fit
    images: int


def plan_calibration(cfg: AnomalyConfig, n_val: int, n_normal: int) -> CalibrationPlan:
    """The plan for ``n_val`` validation images among ``n_normal`` normal images in all."""
    split = n_val // 2  # the odd positions: selection_and_calibration's calibration half
    reachable = achievable_fpr(split) <= cfg.target_fpr
    if cfg.calibration == "split" or (cfg.calibration == "auto" and reachable):
        return CalibrationPlan("split", split)
    return CalibrationPlan("cross_fit", n_normal)


def reachability_warning(
    cfg: AnomalyConfig, plan: CalibrationPlan, val_fraction: float
) -> str | None:
    """One line when ``cfg.target_fpr`` is below what the plan's calibration images can
    promise (1 / (n + 1)): the smallest reachable rate, and how many normal images would reach
    the target; None when it is reachable."""
    if achievable_fpr(plan.images) <= cfg.target_fpr:
        return None
    needed = math.ceil(1 / cfg.target_fpr) - 1  # calibration scores: 1 / (needed + 1) <= target
    as_split = math.ceil(
        2 * needed / val_fraction
    )  # normal images whose validation half holds them
    return (
        f"warning: anomaly.target_fpr {cfg.target_fpr:g} is below the smallest false-positive "
        f"rate {plan.images} calibration image(s) ({plan.method}) can promise, "
        f"{achievable_fpr(plan.images):.1%}: the threshold will flag about that many normal "
        f"images; {needed} normal images would reach the target with anomaly.calibration: "
        f"cross_fit (or auto), {as_split} with split; add normal images or raise target_fpr"
    )


def calibrate_split_or_cross_fit(
    scorer: Scorer,
    plan: CalibrationPlan,
    recipe: tuple[ModelConfig, TrainConfig, AnomalyConfig],
    train_images: np.ndarray,
    val_images: np.ndarray,
    val_fraction: float,
    **context: object,
) -> ThresholdRecord:
    """The threshold record of ``scorer`` (the deployed model, trained on ``train_images`` with
    early stopping on the selection half of ``val_images``) by ``plan``: split conformal on the
    calibration half, or cross-fitted on all normal images (``cross_fitted``)."""
    anomaly = recipe[2]
    if plan.method == "split":
        _, calibration = selection_and_calibration(val_images)
        return calibrate(scorer, calibration, anomaly.target_fpr, calibration="split", **context)
    normal = np.concatenate([train_images, val_images])
    name = scorer.spec.name
    scores, map_scale = cross_fitted(recipe, normal, scorer.spec, (name,), val_fraction)
    return make_record(scorer.spec, scores[name], anomaly.target_fpr, calibration="cross_fit",
                       folds=anomaly.folds, map_scale=map_scale, **context)  # fmt: skip


def cross_fitted(
    recipe: tuple[ModelConfig, TrainConfig, AnomalyConfig],
    normal_images: np.ndarray,
    spec: ScoreSpec,
    names: tuple[str, ...],
    val_fraction: float,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, np.ndarray], float]:
    """Out-of-fold scores ``names`` of every normal image (float64 (N,) each; ``spec``: their
    sample count and noise, and the default map's score): the images cut into
    ``anomaly.folds`` parts (seeded), and per part a model trained by the pipeline's recipe on
    the other parts (``val_fraction`` of them held out for early stopping and the fused
    statistics) scores that part. Also the 99.9th percentile of the out-of-fold maps (the
    overlays' colour scale)."""
    model_cfg, train_cfg, anomaly = recipe
    folds = min(anomaly.folds, len(normal_images))
    order = np.random.default_rng(train_cfg.seed).permutation(len(normal_images))
    scores, maps = {name: np.empty(len(normal_images)) for name in names}, []
    for fold in range(folds):
        held = order[fold::folds]
        rest = order[np.arange(len(order)) % folds != fold]
        n_val = max(2, round(val_fraction * len(rest)))
        train = normal_images[rest[n_val:]]
        fitted = train_and_fit(model_cfg, train_cfg, anomaly, train, normal_images[rest[:n_val]],
                               log=lambda line: None)  # fmt: skip
        # Fitted as the deployed model is (features-only too, where it is); the images beside
        # it for the scores that compare pixels (cosine_knn in the benchmark's table).
        scorer = Scorer(fitted.training.model, fitted.reference.with_images(train), spec)
        found, fold_maps = score_and_map(scorer, normal_images[held], names)
        for name in names:
            scores[name][held] = found[name]
        maps.append(fold_maps)
        log(f"cross-fit calibration: fold {fold + 1}/{folds} scored {len(held)} images")
    return scores, map_scale_of(np.concatenate(maps))
