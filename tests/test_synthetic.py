"""Anomalies made from normal images and the label-free check (convvae.anomaly.synthetic), on
real digits: each corruption is local, the check measures the ranking a score gives them, and a
score that ranks them below chance gets its one-line warning."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from convvae.anomaly.model_card import model_card
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.synthetic import (
    CHECK_IMAGES,
    FAMILIES,
    synthetic_anomalies,
    synthetic_check,
)
from convvae.anomaly.thresholds import make_record


@pytest.fixture(scope="module")
def digits(mnist_slice):
    return mnist_slice.val.images[:60]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_corruption_is_local_and_reproducible(digits, family):
    odd = synthetic_anomalies(digits, family, seed=3)
    assert odd.dtype == np.uint8 and odd.shape == digits.shape
    assert np.array_equal(odd, synthetic_anomalies(digits, family, seed=3))
    assert not np.array_equal(odd, synthetic_anomalies(digits, family, seed=4))
    changed = (odd != digits).any(1)  # (N, H, W)
    share = changed.reshape(len(digits), -1).mean(1)
    assert share.max() <= 0.16  # at most a third of each side, or 15% of the image
    assert (share > 0).mean() > 0.6  # most images changed (a blank area may stay blank)
    if family != "blend":  # a rectangle: every changed pixel inside one box of <= 1/3 a side
        for mask in changed[share > 0]:
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert rows[-1] - rows[0] < 28 // 3 + 1 and cols[-1] - cols[0] < 28 // 3 + 1


def test_meanfill_fills_its_rectangle_with_one_level(digits):
    odd = synthetic_anomalies(digits, "meanfill")
    for before, after in zip(digits, odd, strict=True):
        changed = (after != before)[0]
        if changed.any():
            assert len(np.unique(after[0][changed])) == 1


def test_an_unknown_family_and_too_few_images_are_refused(digits):
    with pytest.raises(ValueError, match="unknown synthetic anomaly 'scratch'"):
        synthetic_anomalies(digits, "scratch")
    with pytest.raises(ValueError, match="need 2\\+ normal images"):
        synthetic_check(lambda images: np.zeros(len(images)), digits[:1])


def _distance_score(reference: np.ndarray):
    """Distance of the unit pixel vector to the nearest reference digit: it sees the changes."""

    def unit(images):
        flat = images.reshape(len(images), -1).astype(np.float64)
        return flat / np.linalg.norm(flat, axis=1, keepdims=True).clip(1e-8)

    search = NearestNeighbors(n_neighbors=1).fit(unit(reference))
    return lambda images: search.kneighbors(unit(images))[0][:, 0]


def test_the_check_ranks_what_a_score_sees_and_warns_below_chance(mnist_slice, digits):
    score = _distance_score(mnist_slice.train.images)
    check = synthetic_check(score, digits)
    assert check.normal_images == len(digits) and set(check.per_family) == set(FAMILIES)
    assert check.ci_low <= check.roc_auc <= check.ci_high
    assert check.ci_low > 0.5 and check.warning("cosine_knn") is None
    inverted = synthetic_check(lambda images: -score(images), digits)
    assert inverted.roc_auc == pytest.approx(1 - check.roc_auc)
    warning = inverted.warning("cosine_knn")
    assert warning is not None and "\n" not in warning
    assert warning.startswith("warning: the cosine_knn score ranks") and "below chance" in warning
    # The card says the same, beside the figures.
    spec = ScoreSpec("cosine_knn", 8, 0)
    record = make_record(spec, np.arange(40.0), 0.05, calibration="split")
    card = model_card(record, "folder", {}, {}, 0, inverted)
    line = next(line for line in card.splitlines() if "made from its own normal" in line)
    assert f"ROC-AUC {inverted.roc_auc:.3f}" in line and "**Below chance**" in line
    assert "Below chance" not in model_card(record, "folder", {}, {}, 0, check)


def test_the_check_uses_at_most_its_share_of_images(mnist_slice):
    many = mnist_slice.test.images[: CHECK_IMAGES + 20]
    seen = []
    synthetic_check(lambda images: seen.append(len(images)) or np.arange(len(images)), many)
    assert seen == [CHECK_IMAGES] * (1 + len(FAMILIES))
