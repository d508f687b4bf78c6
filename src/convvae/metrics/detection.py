"""Detection metrics of anomaly scores against labels: ROC-AUC with intervals, PR-AUC, FPR at
95% TPR, F1 at a threshold, ROC curves.

Convention: a higher score means more anomalous; labels are 1 for anomalous and 0 for normal
images (the anomalous class is the positive class of ROC-AUC, PR-AUC and F1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from convvae.metrics.stats import percentile_interval, roc_auc_replicates


def separation_roc_auc(normal_scores: np.ndarray, odd_scores: np.ndarray) -> float:
    """ROC-AUC of ``odd_scores`` (positive) against ``normal_scores``: 1.0 when every odd
    image scores above every normal one, 0.5 chance."""
    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(odd_scores))]
    return float(roc_auc_score(labels, np.r_[normal_scores, odd_scores]))


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the lowest threshold that flags at least ``tpr`` of the positives.

    labels: (N,) 1 positive, 0 negative; scores: (N,) higher = more positive. With anomalies
    positive this is the share of normal images flagged when ``tpr`` of the anomalies are
    caught; the OOD literature's FPR95 takes the normal images as positive (``labels`` 1 - y,
    ``scores`` -s): the share of anomalies passed when 95% of normal images pass.
    """
    fprs, tprs, _ = roc_curve(labels, scores)
    return float(fprs[np.searchsorted(tprs, tpr, side="left")])


def f1_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of flagging ``scores > threshold`` as anomalous (label 1), and
    the realised false-positive rate: the share of normal images (label 0) flagged."""
    flagged = np.asarray(scores) > threshold
    labels = np.asarray(labels).astype(bool)
    true_pos = np.count_nonzero(flagged & labels)
    precision = true_pos / max(np.count_nonzero(flagged), 1)
    recall = true_pos / max(np.count_nonzero(labels), 1)
    f1 = 2 * precision * recall / (precision + recall) if true_pos else 0.0
    false_pos_rate = np.count_nonzero(flagged & ~labels) / max(np.count_nonzero(~labels), 1)
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "realised_fpr": float(false_pos_rate),
    }


def chance_levels(labels: np.ndarray) -> dict[str, float]:
    """What a detector without skill gets, for the metrics whose chance level is not 0.5:
    average precision with anomalies positive (their share) and with normal images positive
    (theirs), and the F1 of flagging every image as anomalous."""
    anomalous_share = float(np.mean(np.asarray(labels) == 1))
    return {
        "average_precision_chance": anomalous_share,
        "average_precision_in_chance": 1 - anomalous_share,
        "f1_flag_all": 2 * anomalous_share / (1 + anomalous_share),
    }


def seed_interval(values: list[float], level: float = 0.95) -> dict[str, float | None]:
    """Spread of a metric over seeds: sample standard deviation (ddof=1) and the Student-t
    interval of the mean, which, unlike the bootstrap over test images, counts the training
    randomness; None with a single seed."""
    if len(values) < 2:
        return {"roc_auc_seed_sd": None, "roc_auc_seed_ci_low": None, "roc_auc_seed_ci_high": None}
    from scipy import stats

    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * sd / np.sqrt(len(values))
    return {
        "roc_auc_seed_sd": sd,
        "roc_auc_seed_ci_low": mean - half,
        "roc_auc_seed_ci_high": mean + half,
    }


def detection_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    n_resamples: int = 1000,
    seed: int = 0,
    auc_replicates: np.ndarray | None = None,
) -> dict[str, float | None]:
    """ROC-AUC with a bootstrap 95% interval over test images and an interval over seeds,
    average precision with anomalies positive (AUPR-out) and with normal images positive
    (AUPR-in) beside their chance levels, the share of normal images flagged when 95% of the
    anomalies are (anomalies positive) and the share of anomalies passed when 95% of the normal
    images pass (the OOD literature's FPR95), and precision, recall, F1 and the
    realised false-positive rate at ``threshold``, beside the F1 of flagging everything.

    labels: (N,) 1 anomalous, 0 normal. scores: (N,) or (N, S) for S seeds; with several
    columns every metric is the mean over seeds, and the bootstrap interval resamples test
    images (rows) for that mean. ``threshold``: a scalar, or (S,) one per seed.
    ``auc_replicates``: the bootstrap replicates of these scores' ROC-AUC when already drawn
    (``roc_auc_replicates`` with the same ``n_resamples`` and ``seed``).
    """
    labels = np.asarray(labels)
    columns = np.asarray(scores, dtype=np.float64).reshape(len(labels), -1)
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), columns.shape[1:])

    def mean_over_seeds(metric: Callable[[np.ndarray, np.ndarray], float]):
        return lambda y, s: float(np.mean([metric(y, column) for column in s.T]))

    mean_auc = mean_over_seeds(roc_auc_score)
    if auc_replicates is None:
        auc_replicates = roc_auc_replicates(labels, columns, n_resamples, seed)
    low, high = percentile_interval(auc_replicates)
    per_seed = [f1_at_threshold(labels, c, t) for c, t in zip(columns.T, thresholds, strict=True)]
    aucs = [roc_auc_score(labels, column) for column in columns.T]
    return {
        "roc_auc": mean_auc(labels, columns),
        "roc_auc_ci_low": low,
        "roc_auc_ci_high": high,
        **seed_interval(aucs),
        "average_precision": mean_over_seeds(average_precision_score)(labels, columns),
        "average_precision_in": mean_over_seeds(average_precision_score)(1 - labels, -columns),
        # Both conventions, named so neither is misread (fpr_at_tpr's docstring).
        "normal_flagged_at_95_recall": mean_over_seeds(fpr_at_tpr)(labels, columns),
        "anomalies_passed_at_95_normal": mean_over_seeds(fpr_at_tpr)(1 - labels, -columns),
        "threshold": float(np.mean(thresholds)),
        **{key: float(np.mean([m[key] for m in per_seed])) for key in per_seed[0]},
        **chance_levels(labels),
    }


def roc_points(labels: np.ndarray, scores: np.ndarray) -> list[dict[str, float]]:
    """The ROC curve as rows ``{"fpr": .., "tpr": ..}`` (for DVC plots), corners included."""
    fprs, tprs, _ = roc_curve(labels, scores)
    return [{"fpr": float(f), "tpr": float(t)} for f, t in zip(fprs, tprs, strict=True)]
