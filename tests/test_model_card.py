"""The model card (convvae.anomaly.model_card): what the threshold promises for the record it is
given, and the checks measured beside it, the margin over methods without a trained VAE
included."""

import numpy as np

from convvae.anomaly.model_card import model_card
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.thresholds import fpr_spread, make_record

FOLDER_DEFECTS = {
    "image_roc_auc": 0.912,
    "pixel_roc_auc": 0.874,
    "vae_free_best": "pixel_patch_knn",
    "margin_over_vae_free.image_roc_auc": -0.021,
    "margin_over_vae_free.ci_low": -0.06,
    "margin_over_vae_free.ci_high": 0.015,
}


def record(n: int, calibration: str):
    scores = np.random.default_rng(n).normal(size=n)
    spec = ScoreSpec("patch_knn_guarded", 8, 0)
    return make_record(spec, scores, 0.05, calibration=calibration, folds=10)


def test_the_card_states_the_threshold_its_calibration_and_its_spread():
    found = record(40, "cross_fit")
    card = model_card(found, "folder", {"blank": 1.0, "noise": 0.987}, FOLDER_DEFECTS, 360)
    low, high = fpr_spread(40, 0.05)
    assert f"above **{found.threshold:.4g}**" in card
    assert "Calibrated** on 40 normal images" in card and "one of 10 models" in card
    assert f"between {low:.1%} and {high:.1%}" in card
    assert "blank 1.000, noise 0.987" in card
    assert "image ROC-AUC 0.912, pixel ROC-AUC 0.874" in card
    margin = next(line for line in card.splitlines() if "without a trained VAE" in line)
    assert "(pixel_patch_knn): -0.021 image ROC-AUC" in margin
    assert "[-0.060, +0.015]" in margin
    # The files hold the training images: a user must know before sharing the model.
    assert "contain 360 normal training images exactly" in card


def test_a_class_model_card_has_no_defect_or_margin_lines():
    card = model_card(record(200, "split"), "mnist-5k", {}, {"note": "no defect images"}, 0)
    assert "validation images that training and early stopping never saw" in card
    assert "Defects in the folder" not in card and "without a trained VAE" not in card
    assert "Out-of-domain" not in card
    assert "Holds its training images" not in card  # a file without a reference holds none
    narrower = fpr_spread(200, 0.05)
    wider = fpr_spread(40, 0.05)
    assert narrower[1] - narrower[0] < wider[1] - wider[0]  # more images, a tighter promise
