"""convvae.anomaly (the one estimator), detection metrics, decision thresholds, bootstrap CIs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from convvae.anomaly import (
    SCORES,
    ScoreSpec,
    all_scores,
    compressed_bits,
    model_scores,
    score_images,
)
from convvae.data import load_source, make_splits
from convvae.decision import calibrate, read_threshold, threshold_from_normal
from convvae.detection import detection_metrics, f1_at_threshold, fpr_at_tpr, roc_points
from convvae.errors import DataError
from convvae.stats import bootstrap_ci
from convvae.train import Trainer
from tests.conftest import quick_train_config, tiny_model


def separated(n: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n normal scores from N(0, 1) and n anomalous from N(shift, 1); labels 1 = anomalous."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(0, 1, n), rng.normal(shift, 1, n)])
    return np.repeat([0, 1], n), scores


# --- metrics on hand-made scores ---------------------------------------------------------------


def test_roc_auc_of_a_perfect_score_is_one_and_of_a_reversed_one_zero():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    perfect = detection_metrics(labels, scores, threshold=0.5, n_resamples=100)
    reversed_ = detection_metrics(labels, -scores, threshold=0.0, n_resamples=100)
    assert perfect["roc_auc"] == 1.0 and perfect["average_precision"] == 1.0
    assert perfect["fpr_at_95_tpr"] == 0.0 and perfect["f1"] == 1.0
    assert reversed_["roc_auc"] == 0.0 and reversed_["fpr_at_95_tpr"] == 1.0


def test_fpr_at_95_tpr_against_a_hand_computed_case():
    # Flagging all 4 anomalies needs a threshold <= 0.4, which also flags the normal 0.9: 1 of 4.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.5, 0.6, 0.8])
    assert fpr_at_tpr(labels, scores, 0.95) == 0.25
    # 3 of 4 anomalies (TPR 0.75) are caught above 0.5, with the normal 0.9: still 1 of 4.
    assert fpr_at_tpr(labels, scores, 0.75) == 0.25
    assert fpr_at_tpr(labels, scores, 0.25) == 0.25  # 0.9 ranks above every anomaly


def test_f1_at_a_threshold():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.7, 0.8, 0.2])
    # flagged (> 0.5): 0.6 (normal), 0.7, 0.8 → precision 2/3, recall 2/3.
    result = f1_at_threshold(labels, scores, 0.5)
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert f1_at_threshold(labels, scores, 1.0)["f1"] == 0.0


def test_threshold_is_a_quantile_of_normal_scores_and_flags_about_that_share():
    assert threshold_from_normal(np.arange(101.0), 0.95) == 95.0
    rng = np.random.default_rng(0)
    threshold = threshold_from_normal(rng.normal(size=5000), 0.95)
    held_out_normals = rng.normal(size=5000)
    assert np.mean(held_out_normals > threshold) == pytest.approx(0.05, abs=0.01)
    with pytest.raises(ValueError, match="non-empty"):
        threshold_from_normal(np.array([]))


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_data():
    from sklearn.metrics import roc_auc_score

    widths = []
    for n in (50, 2000):
        labels, scores = separated(n, shift=1.0)
        low, high = bootstrap_ci(roc_auc_score, labels, scores, n_resamples=300, seed=0)
        assert low <= roc_auc_score(labels, scores) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # about 1/sqrt(40) as wide
    assert bootstrap_ci(roc_auc_score, labels, scores, 200, seed=1) == bootstrap_ci(
        roc_auc_score, labels, scores, 200, seed=1
    )
    with pytest.raises(ValueError, match="labels"):
        bootstrap_ci(roc_auc_score, labels[:10], scores, 100)


def test_several_seeds_average_the_metric_and_resample_images_together():
    labels, scores = separated(200, shift=1.5)
    noisy = scores + np.random.default_rng(1).normal(0, 0.5, len(scores))
    both = detection_metrics(labels, np.stack([scores, noisy], 1), np.array([1.0, 1.0]), 200)
    first = detection_metrics(labels, scores, 1.0, 200)
    second = detection_metrics(labels, noisy, 1.0, 200)
    assert both["roc_auc"] == pytest.approx((first["roc_auc"] + second["roc_auc"]) / 2)
    assert both["roc_auc_ci_low"] <= both["roc_auc"] <= both["roc_auc_ci_high"]
    assert both["roc_auc_seed_sd"] > 0


def test_roc_points_run_from_the_origin_to_the_corner():
    labels, scores = separated(50, shift=2.0)
    rows = roc_points(labels, scores)
    assert rows[0] == {"fpr": 0.0, "tpr": 0.0} and rows[-1] == {"fpr": 1.0, "tpr": 1.0}


# --- scores of a model --------------------------------------------------------------------------


def test_scores_are_deterministic_and_do_not_depend_on_the_batch(trained, mnist_slice):
    images = torch.from_numpy(mnist_slice.test.images[:40])
    first = model_scores(trained, images, k=8, seed=3)
    again = model_scores(trained, images, k=8, seed=3)
    alone = model_scores(trained, images[7:8], k=8, seed=3)
    for name in first:
        assert first[name].shape == (40,) and first[name].dtype == np.float64
        np.testing.assert_array_equal(first[name], again[name])
        np.testing.assert_allclose(alone[name], first[name][7:8], rtol=1e-5)
    # log-mean-exp >= mean of the same log-weights: the IWAE bound is the tighter one.
    assert np.all(first["iwae_nll"] <= first["neg_elbo"] + 1e-9)
    assert np.all(first["recon_bce"] > 0)


def naive_iwae_nll(model, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """-log p(x) by the IWAE bound written out one sample at a time, for x float (B, ...)."""
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    log_weights = []
    for e in eps:
        z = mu + std * e
        logits = model.decode(z)
        log_px_z = (
            -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
            .flatten(1)
            .sum(1)
        )
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(1)
        log_qz = -0.5 * (e.pow(2) + logvar + math.log(2 * math.pi)).sum(1)
        log_weights.append(log_px_z + log_pz - log_qz)
    return -(torch.logsumexp(torch.stack(log_weights), 0) - math.log(len(eps)))


def test_batched_iwae_matches_the_bound_written_out_sample_by_sample(trained, mnist_slice):
    images = torch.from_numpy(mnist_slice.test.images[:16])
    ours = model_scores(trained, images, k=16, seed=5)
    eps = torch.randn(16, trained.arch.latent_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = naive_iwae_nll(trained, images.float() / 255, eps).double().numpy()
    np.testing.assert_allclose(ours["iwae_nll"], reference, rtol=1e-4)
    np.testing.assert_allclose(ours["neg_elbo"], ours["recon_nll"] + ours["kl"], rtol=1e-9)
    # k = 1 is the single-sample negative ELBO: the IWAE bound and the ELBO coincide.
    one = model_scores(trained, images, k=1, seed=5)
    np.testing.assert_allclose(one["iwae_nll"], one["neg_elbo"], rtol=1e-9)
    # More samples tighten the bound on -log p(x): lower NLL than the ELBO on average.
    assert ours["iwae_nll"].mean() < ours["neg_elbo"].mean() - 0.5


def test_score_images_is_model_scores_of_the_named_score(trained, mnist_slice):
    images = mnist_slice.test.images[:20]
    spec = ScoreSpec("excess_nll", samples=4, noise_seed=1)
    expected = model_scores(trained, torch.from_numpy(images), 4, 1)["excess_nll"]
    np.testing.assert_array_equal(score_images(trained, images, spec), expected)
    # Float pixels in [0, 1] (what serving receives) give the same scores as uint8.
    floats = images.astype(np.float32) / 255
    np.testing.assert_allclose(score_images(trained, floats, spec), expected, rtol=1e-6)
    complexity = score_images(trained, images, ScoreSpec("complexity", 4, 1))
    np.testing.assert_allclose(complexity, all_scores(trained, images, 4, 1)["complexity"])


def test_calibrate_flags_about_one_minus_the_quantile_of_normal_images(trained, mnist_slice):
    val = mnist_slice.val.images
    spec = ScoreSpec("neg_elbo", samples=2)
    record = calibrate(trained, val, spec, 0.9, normal_class=None, data_source="mnist-5k")
    scores = score_images(trained, val, spec)
    assert record["threshold"] == threshold_from_normal(scores, 0.9)
    assert abs(np.mean(scores > record["threshold"]) - 0.1) < 0.02
    assert record["score"] == "neg_elbo" and record["iwae_samples"] == 2
    assert record["normal_class"] is None and record["data_source"] == "mnist-5k"


def test_compressed_bits_of_a_blank_image_are_fewer_than_of_a_digit(mnist_slice):
    digits = mnist_slice.test.images[:5]
    blank = np.zeros((1, *digits.shape[1:]), dtype=np.uint8)
    bits = compressed_bits(np.concatenate([blank, digits]))
    assert bits.shape == (6,) and np.all(bits % 8 == 0)
    assert np.all(bits[0] < bits[1:])


@pytest.fixture(scope="module")
def digit_one():
    """The tiny model trained on the digit 1 only (about 350 mnist-5k training images)."""
    splits = make_splits(load_source("mnist-5k"), 0.1, 0.2, seed=0)
    ones = torch.from_numpy(splits.train.images[splits.train.labels == 1])
    val_ones = torch.from_numpy(splits.val.images[splits.val.labels == 1])
    trainer = Trainer(tiny_model(), quick_train_config(epochs=10, lr=3e-3), progress=False)
    return trainer.fit(ones, val_ones).model, splits.test


def test_a_model_of_the_digit_one_scores_other_digits_higher(digit_one):
    model, test = digit_one
    labels = (test.labels != 1).astype(int)
    scores = all_scores(model, test.images, k=8)
    assert set(scores) == set(SCORES)
    for name in ("recon_bce", "neg_elbo", "iwae_nll", "excess_nll"):
        metrics = detection_metrics(labels, scores[name], np.median(scores[name]), 200)
        assert metrics["roc_auc"] > 0.9, (name, metrics)


def test_the_complexity_score_subtracts_the_compressed_length(digit_one):
    model, test = digit_one
    images = test.images[:100]
    scores = all_scores(model, images, k=8)
    bits = compressed_bits(images)
    np.testing.assert_allclose(scores["complexity"], scores["iwae_nll"] / math.log(2) - bits)
    # Passing precomputed lengths gives the same scores.
    again = all_scores(model, images, k=8, bits=bits)
    np.testing.assert_array_equal(again["complexity"], scores["complexity"])


def test_the_excess_nll_is_the_iwae_nll_above_the_bernoulli_floor(digit_one):
    """The floor sum_i H(x_i), recomputed here from the pixels, is subtracted. The true
    -log p(x) never falls below it (Gibbs' inequality per pixel); the k-sample estimate could in
    principle, but for a trained model it sits far above."""
    model, test = digit_one
    images = test.images[:100]
    scores = all_scores(model, images, k=8)
    x = np.clip(images.astype(np.float64) / 255, 1e-12, 1 - 1e-12)
    floor = -(x * np.log(x) + (1 - x) * np.log1p(-x)).reshape(len(x), -1).sum(1)
    np.testing.assert_allclose(scores["excess_nll"], scores["iwae_nll"] - floor, rtol=1e-4)
    assert np.all(scores["excess_nll"] > 0)


# --- the stored threshold -----------------------------------------------------------------------


def test_read_threshold_and_its_errors(tmp_path):
    path = tmp_path / "threshold.json"
    fields = {"score": "iwae_nll", "threshold": 12.5, "iwae_samples": 8, "noise_seed": 0}
    path.write_text(json.dumps({**fields, "normal_class": 3}))
    stored = read_threshold(path)
    assert stored.spec == ScoreSpec("iwae_nll", 8, 0)
    assert stored.threshold == 12.5 and stored.normal_class == 3
    with pytest.raises(DataError, match="no threshold file"):
        read_threshold(tmp_path / "missing.json")
    path.write_text(json.dumps(fields))  # a model trained on every class has no normal class
    assert read_threshold(path).normal_class is None
    path.write_text(json.dumps({k: v for k, v in fields.items() if k != "threshold"}))
    with pytest.raises(DataError, match="KeyError"):
        read_threshold(path)
    path.write_text(json.dumps({**fields, "normal_class": 3, "score": "psnr"}))
    with pytest.raises(DataError, match="unknown score"):
        read_threshold(path)
