"""Bootstrap statistics: paired comparisons of two models, intervals of the ROC-AUC and of the
difference between two methods' ROC-AUC."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    """challenger minus champion improvement in a lower-is-better per-image loss.

    ``improvement`` > 0 means the challenger's mean loss is lower; the 95% interval and
    ``no_improvement_share`` (the share of resamples in which the challenger is not better, a
    bootstrap tail, not a p-value of a test) come from a paired bootstrap over images.
    """

    champion_mean: float
    challenger_mean: float
    improvement: float
    ci_low: float
    ci_high: float
    no_improvement_share: float
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
    no_improvement = (np.count_nonzero(means <= 0) + 1) / (n_resamples + 1)
    return PairedComparison(
        champion_mean=float(champion.mean()),
        challenger_mean=float(challenger.mean()),
        improvement=float(improvement.mean()),
        ci_low=float(low),
        ci_high=float(high),
        no_improvement_share=float(no_improvement),
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
    """Percentile bootstrap interval of the ROC-AUC (the mean over seed columns): the interval
    of ``roc_auc_replicates``. Returns (low, high)."""
    if not 0 < level < 1:
        raise ValueError(f"need 0 < level < 1, got {level}")
    return percentile_interval(roc_auc_replicates(labels, scores, n_resamples, seed), level)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap replicates: (low, high)."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def roc_auc_replicates(
    labels: np.ndarray, scores: np.ndarray, n_resamples: int = 1000, seed: int = 0
) -> np.ndarray:
    """The ROC-AUC (the mean over seed columns) of ``n_resamples`` bootstrap resamples of the
    test images, float64 (n_resamples,).

    Test images are drawn with replacement within each label (a stratified bootstrap), so every
    resample keeps the class counts. The draws depend only on the labels and ``seed``: two
    methods scored on the same images get the same resamples, so the difference of their
    replicates is a paired bootstrap of the difference. A resample only reweights the images,
    so its ROC-AUC (the Mann-Whitney statistic, ties counted half) comes from how often each
    distinct score value was drawn: one sort per column, then O(N) per resample instead of
    ranking every resample.

    labels: (N,) 0 normal / 1 anomalous, both present; scores: (N,) or (N, S).
    """
    labels = np.asarray(labels)
    columns = np.asarray(scores, dtype=np.float64).reshape(len(labels), -1)
    negatives, positives = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if labels.ndim != 1 or len(columns) != len(labels) or not len(negatives) or not len(positives):
        raise ValueError(
            f"need labels (N,) with both 0 and 1 and scores (N, ...), got {labels.shape} and "
            f"{np.shape(scores)}"
        )
    if n_resamples < 1:
        raise ValueError(f"need n_resamples >= 1, got {n_resamples}")
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
    return values / columns.shape[1]


def _counts_per_group(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(B, M) group ids in [0, n_groups), a row per resample -> (B, n_groups) draws per group."""
    offsets = np.arange(len(groups))[:, None] * n_groups
    counts = np.bincount((groups + offsets).ravel(), minlength=len(groups) * n_groups)
    return counts.reshape(len(groups), n_groups)


@dataclass(frozen=True)
class AucDifference:
    """ROC-AUC of one method minus another's on the same test images, with a paired bootstrap
    interval (``level``, percentile); positive: the first ranks anomalies better."""

    difference: float
    ci_low: float
    ci_high: float
    replicates: np.ndarray = field(repr=False, compare=False)  # (n_resamples,)

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly on one side of 0: a difference beyond resampling noise."""
        return self.ci_low > 0 or self.ci_high < 0

    @classmethod
    def of(cls, point: float, replicates: np.ndarray, level: float = 0.95) -> AucDifference:
        """The difference ``point`` with the percentile interval of its bootstrap replicates."""
        return cls(float(point), *percentile_interval(replicates, level), replicates)

    def as_dict(self) -> dict[str, float]:
        """JSON-ready: difference, ci_low, ci_high."""
        return {"difference": self.difference, "ci_low": self.ci_low, "ci_high": self.ci_high}


def roc_auc_difference(
    labels: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> AucDifference:
    """ROC-AUC of ``first`` minus ``second`` (each (N,) or (N, S): the mean over seed columns)
    on the same labels (N,), paired: both are resampled with the same draws."""
    replicates = roc_auc_replicates(labels, first, n_resamples, seed) - roc_auc_replicates(
        labels, second, n_resamples, seed
    )
    point = _mean_roc_auc(labels, first) - _mean_roc_auc(labels, second)
    return AucDifference.of(point, replicates, level)


def mean_difference(differences: list[AucDifference], level: float = 0.95) -> AucDifference:
    """The mean of several differences (e.g. over the normal classes, each scored on its own
    test labels and resampled independently), with the interval of the mean of their
    replicates."""
    replicates = np.mean([d.replicates for d in differences], axis=0)
    return AucDifference.of(np.mean([d.difference for d in differences]), replicates, level)


def _mean_roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    columns = np.asarray(scores, dtype=np.float64).reshape(len(labels), -1)
    return float(np.mean([roc_auc_score(labels, column) for column in columns.T]))


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact binomial interval of a rate seen ``successes`` times in ``trials`` (e.g. the
    normal test images a threshold flags): (low, high)."""
    from scipy.stats import beta

    tail = (1 - level) / 2
    low = beta.ppf(tail, successes, trials - successes + 1) if successes > 0 else 0.0
    high = beta.ppf(1 - tail, successes + 1, trials - successes) if successes < trials else 1.0
    return float(low), float(high)
