"""convvae.metrics.stats: paired bootstrap intervals of the difference between two methods'
ROC-AUC on the same test images, and their mean over classes."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from convvae.metrics.stats import (
    AucDifference,
    mean_difference,
    percentile_interval,
    roc_auc_difference,
    roc_auc_replicates,
)


def two_methods(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (1 = anomalous) and two scores of the same images: the second is the first plus
    noise, so it ranks anomalies worse, and the two are strongly correlated."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n)
    first = rng.normal(0, 1, 2 * n) + 1.5 * labels
    second = first + rng.normal(0, 1.0, 2 * n)
    return labels, first, second


def test_a_method_against_itself_differs_by_exactly_zero():
    labels, first, _ = two_methods(100)
    same = roc_auc_difference(labels, first, first, n_resamples=200)
    assert same.difference == 0 and same.ci_low == same.ci_high == 0
    assert not same.excludes_zero


def test_the_difference_is_paired_and_its_interval_covers_the_point():
    labels, first, second = two_methods(300)
    found = roc_auc_difference(labels, first, second, n_resamples=500, seed=3)
    expected = roc_auc_score(labels, first) - roc_auc_score(labels, second)
    assert found.difference == pytest.approx(expected)
    assert found.ci_low <= found.difference <= found.ci_high
    assert found.difference > 0 and found.excludes_zero  # the noisy copy is clearly worse
    # Paired: the replicates are those of each method on the same resamples, subtracted.
    paired = roc_auc_replicates(labels, first, 500, 3) - roc_auc_replicates(labels, second, 500, 3)
    np.testing.assert_array_equal(found.replicates, paired)
    # Unpaired resamples (another seed for the second method) give a wider interval: the
    # correlation between the two methods is what the pairing keeps.
    unpaired = roc_auc_replicates(labels, first, 500, 3) - roc_auc_replicates(
        labels, second, 500, 4
    )
    low, high = percentile_interval(unpaired)
    assert high - low > 1.5 * (found.ci_high - found.ci_low)


def test_the_mean_over_classes_averages_points_and_replicates():
    differences = []
    for seed in range(3):
        labels, first, second = two_methods(150, seed)
        differences.append(roc_auc_difference(labels, first, second, n_resamples=300, seed=seed))
    mean = mean_difference(differences)
    assert mean.difference == pytest.approx(np.mean([d.difference for d in differences]))
    np.testing.assert_allclose(mean.replicates, np.mean([d.replicates for d in differences], 0))
    # Averaging independent classes narrows the interval.
    assert mean.ci_high - mean.ci_low < min(d.ci_high - d.ci_low for d in differences)
    assert AucDifference.of(0.1, mean.replicates).as_dict()["difference"] == 0.1


def test_seed_columns_are_averaged_before_the_difference():
    labels, first, second = two_methods(100)
    two_seeds = np.stack([first, first + 0.01], axis=1)
    found = roc_auc_difference(labels, two_seeds, second, n_resamples=100)
    expected = np.mean([roc_auc_score(labels, c) for c in two_seeds.T]) - roc_auc_score(
        labels, second
    )
    assert found.difference == pytest.approx(expected)
