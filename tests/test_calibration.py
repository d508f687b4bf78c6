"""convvae.anomaly.calibration: which normal images calibrate, the spread a threshold's rate
has over calibration sets, the warning when the target is out of reach, and cross-fitting, on
real texture tiles."""

import json

import numpy as np
import pytest

from convvae.anomaly.calibration import (
    CalibrationPlan,
    calibrate_split_or_cross_fit,
    cross_fitted,
    plan_calibration,
    reachability_warning,
)
from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import score_images
from convvae.anomaly.thresholds import fpr_spread, parse_record
from convvae.config import AnomalyConfig, parse_params
from tests.conftest import quick_train_config
from tests.mvtec import good_patches


def test_auto_splits_where_the_calibration_half_reaches_the_target():
    auto = AnomalyConfig()  # target 5%: 19 calibration images reach it
    assert plan_calibration(auto, n_val=38, n_normal=380) == CalibrationPlan("split", 19)
    assert plan_calibration(auto, n_val=36, n_normal=360) == CalibrationPlan("cross_fit", 360)
    split = AnomalyConfig(calibration="split")
    assert plan_calibration(split, n_val=6, n_normal=60) == CalibrationPlan("split", 3)
    cross = AnomalyConfig(calibration="cross_fit")
    assert plan_calibration(cross, n_val=400, n_normal=4000).method == "cross_fit"


def test_a_target_out_of_reach_is_one_line_naming_the_reachable_rate_and_the_images_needed():
    cfg = AnomalyConfig(calibration="split")
    line = reachability_warning(cfg, plan_calibration(cfg, 6, 60), val_fraction=0.1)
    assert line.startswith("warning: anomaly.target_fpr 0.05") and "\n" not in line
    assert "3 calibration image(s) (split)" in line and "25.0%" in line
    assert "19 normal images would reach the target" in line and "380 with split" in line
    cross = AnomalyConfig(target_fpr=0.01)
    assert "1.6%" in reachability_warning(cross, plan_calibration(cross, 6, 60), 0.1)
    assert (
        reachability_warning(AnomalyConfig(), plan_calibration(AnomalyConfig(), 6, 60), 0.1) is None
    )


def test_the_spread_of_one_thresholds_rate_is_the_beta_of_its_rank():
    low, high = fpr_spread(25, 0.05)  # rank 25 of 25: Beta(1, 25)
    assert high == pytest.approx(1 - 0.05 ** (1 / 25))  # 11.3%, the 95th percentile
    assert low == pytest.approx(1 - 0.95 ** (1 / 25))
    wide, narrow = fpr_spread(30, 0.05), fpr_spread(3000, 0.05)
    assert narrow[0] < 0.05 < narrow[1] and narrow[1] - narrow[0] < 0.02
    assert wide[1] - wide[0] > 5 * (narrow[1] - narrow[0])
    # Over many calibration sets the rate averages the guarantee (simulated, uniform scores).
    rng = np.random.default_rng(0)
    rank = int(np.ceil(31 * 0.95))  # 30 of 30
    rates = [1 - np.sort(rng.random(30))[rank - 1] for _ in range(4000)]
    assert np.mean(rates) == pytest.approx((31 - rank) / 31, abs=0.003)  # Beta's mean
    assert np.mean((np.array(rates) >= wide[0]) & (np.array(rates) <= wide[1])) == pytest.approx(
        0.9, abs=0.02
    )


@pytest.fixture(scope="module")
def small_folder():
    """60 normal RGB texture tiles, as a user's small train/good folder: 54 train, 6 validation."""
    images = good_patches(True, 16, 60, seed=5)
    return images[:54], images[54:]


def test_sixty_normal_images_calibrate_on_all_sixty_and_reach_the_target(small_folder):
    train, val = small_folder
    params = parse_params({"data": {"source": "folder", "path": "unused"}})
    train_cfg = quick_train_config(epochs=2)
    recipe = (params.model, train_cfg, params.anomaly)
    fitted = train_and_fit(*recipe, train, val, log=lambda line: None)
    scorer = Scorer(fitted.training.model, fitted.reference, ScoreSpec("patch_knn", 4, 0))
    plan = plan_calibration(params.anomaly, len(val), len(train) + len(val))
    assert plan == CalibrationPlan("cross_fit", 60)  # the split half would be 3 images
    record = calibrate_split_or_cross_fit(scorer, plan, recipe, train, val, 0.1)
    stored = record.as_json()
    assert stored["calibration"] == "cross_fit" and stored["calibration_images"] == 60
    assert stored["achievable_fpr"] <= stored["target_fpr"] == 0.05
    assert stored["folds"] == 10 and stored["map_scale"] > 0
    assert "marginal" in stored["guarantee"]
    low, high = stored["expected_fpr_90"]
    assert low < 0.05 < high
    again = parse_record(json.dumps(stored), "test")
    assert again.calibration == "cross_fit" and again.threshold == record.threshold
    # Out of fold: every image was scored by a model that did not train on it (its patches are
    # not in that model's bank), so the deployed model's scores of its own training images sit
    # lower than their out-of-fold scores.
    assert np.median(score_images(scorer, train)) < np.median(record.calibration_scores)


def test_cross_fitting_scores_each_image_once_and_is_reproducible(small_folder):
    train, val = small_folder
    images = np.concatenate([train, val])[:30]
    params = parse_params({"data": {"source": "folder", "path": "unused"}})
    recipe = (params.model, quick_train_config(epochs=1), AnomalyConfig(folds=3))
    spec = ScoreSpec("excess_nll", 2, 0)
    first, scale = cross_fitted(recipe, images, spec, ("excess_nll", "cosine_knn"), 0.1, print)
    again, _ = cross_fitted(recipe, images, spec, ("excess_nll", "cosine_knn"), 0.1, print)
    assert first["excess_nll"].shape == (30,) and np.isfinite(first["cosine_knn"]).all()
    np.testing.assert_array_equal(first["excess_nll"], again["excess_nll"])
    assert scale > 0
