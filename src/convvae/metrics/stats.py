"""Bootstrap statistics: paired comparisons of two models, intervals of the ROC-AUC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    """challenger minus champion improvement in a lower-is-better per-image loss.

    ``improvement`` > 0 means the challenger's mean loss is lower; the 95% interval and the
    one-sided p-value (H0: no improvement) come from a paired bootstrap over images.
    """

    champion_mean: float
    challenger_mean: float
    improvement: float
    ci_low: float
    ci_high: float
    p_value: float
    n_images: int
    n_resamples: int

    @property
    def significant(self) -> bool:
        """Better by more than noise: the whole 95% interval lies above zero."""
        return self.ci_low > 0


def paired_bootstrap(
    champion_losses: np.ndarray,
    challenger_losses: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedComparison:
    """Bootstrap the mean per-image improvement, resampling images (pairs stay together).

    Both arrays: (N,) per-image losses (e.g. negative ELBO in nats) on the same images.
    """
    champion = np.asarray(champion_losses, dtype=np.float64)
    challenger = np.asarray(challenger_losses, dtype=np.float64)
    if champion.shape != challenger.shape or champion.ndim != 1 or len(champion) < 2:
        raise ValueError(
            f"need two equal-length 1-D loss arrays of 2+ images, got {champion.shape} and "
            f"{challenger.shape}"
        )
    improvement = champion - challenger
    rng = np.random.default_rng(seed)
    # Resample in chunks so 2000 x 10,000 indices never sit in memory at once.
    means = np.concatenate(
        [
            improvement[rng.integers(0, len(improvement), (size, len(improvement)))].mean(1)
            for size in _chunks(n_resamples, 200)
        ]
    )
    low, high = np.percentile(means, [2.5, 97.5])
    p_value = (np.count_nonzero(means <= 0) + 1) / (n_resamples + 1)
    return PairedComparison(
        champion_mean=float(champion.mean()),
        challenger_mean=float(challenger.mean()),
        improvement=float(improvement.mean()),
        ci_low=float(low),
        ci_high=float(high),
        p_value=float(p_value),
        n_images=len(improvement),
        n_resamples=n_resamples,
    )


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def bootstrap_roc_auc(
    labels: np.ndarray,
    scores: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC-AUC (the mean over seed columns).

    Test images are drawn with replacement within each label (a stratified bootstrap), so every
    resample keeps the class counts. A resample only reweights the images, so its ROC-AUC (the
    Mann-Whitney statistic, ties counted half) comes from how often each distinct score value
    was drawn: one sort per column, then O(N) per resample instead of ranking every resample.

    labels: (N,) 0 normal / 1 anomalous, both present; scores: (N,) or (N, S). Returns (low, high).
    """
    labels = np.asarray(labels)
    columns = np.asarray(scores, dtype=np.float64).reshape(len(labels), -1)
    negatives, positives = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if labels.ndim != 1 or len(columns) != len(labels) or not len(negatives) or not len(positives):
        raise ValueError(
            f"need labels (N,) with both 0 and 1 and scores (N, ...), got {labels.shape} and "
            f"{np.shape(scores)}"
        )
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n_resamples >= 1 and 0 < level < 1, got {n_resamples}, {level}")
    if np.isnan(columns).any():  # np.unique would rank every NaN as one highest value
        raise ValueError("scores contain NaN: a ROC-AUC needs every test image scored")
    rng = np.random.default_rng(seed)
    n_neg, n_pos = len(negatives), len(positives)
    # Each image's tie group per column: the rank of its distinct score value.
    tie_groups = [np.unique(column, return_inverse=True)[1] for column in columns.T]
    sizes = [int(group.max()) + 1 for group in tie_groups]
    values = np.zeros(n_resamples)
    for start in range(0, n_resamples, 100):  # bounded memory: 100 x N draws at a time
        # Per resample, each label group in turn (the draws of a plain resampling loop).
        draws = [
            (rng.integers(0, n_neg, n_neg), rng.integers(0, n_pos, n_pos))
            for _ in range(min(100, n_resamples - start))
        ]
        picked_neg = negatives[np.stack([neg for neg, _ in draws])]  # (B, n_neg) image indices
        picked_pos = positives[np.stack([pos for _, pos in draws])]
        for group, n_groups in zip(tie_groups, sizes, strict=True):
            neg_counts = _counts_per_group(group[picked_neg], n_groups)
            pos_counts = _counts_per_group(group[picked_pos], n_groups)
            # Negatives below each value, plus half of those tied with it.
            below = np.cumsum(neg_counts, axis=1) - 0.5 * neg_counts
            values[start : start + len(draws)] += (pos_counts * below).sum(1) / (n_pos * n_neg)
    values /= columns.shape[1]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _counts_per_group(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(B, M) group ids in [0, n_groups), a row per resample -> (B, n_groups) draws per group."""
    offsets = np.arange(len(groups))[:, None] * n_groups
    counts = np.bincount((groups + offsets).ravel(), minlength=len(groups) * n_groups)
    return counts.reshape(len(groups), n_groups)
