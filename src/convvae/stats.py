"""Bootstrap statistics: paired comparisons of two models, intervals of a metric."""

from __future__ import annotations

from collections.abc import Callable
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


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    labels: np.ndarray,
    scores: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric_fn(labels, scores)`` over resampled rows.

    labels: (N,) class labels; scores: (N,) or (N, S), rows paired with labels. Rows are drawn
    with replacement within each label (a stratified bootstrap), so every resample keeps the
    class counts and a ranking metric such as ROC-AUC is always defined. Returns (low, high).
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or len(scores) != len(labels) or len(labels) < 2:
        raise ValueError(
            f"need labels (N,) and scores (N, ...) with N >= 2, got {labels.shape} and "
            f"{scores.shape}"
        )
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n_resamples >= 1 and 0 < level < 1, got {n_resamples}, {level}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        rows = np.concatenate([rng.choice(group, len(group)) for group in groups])
        values[i] = metric_fn(labels[rows], scores[rows])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
