"""convvae.anomaly: the scorer (every score of a model), its reference, threshold records and
decisions; detection metrics and bootstrap CIs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from convvae.anomaly.fit import fit_reference
from convvae.anomaly.reference import Reference, load_fitted_model, save_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import (
    ELBO_TERMS,
    FUSED_COMPONENTS,
    LIKELIHOOD_SCORES,
    SCORES,
    ScoreSpec,
)
from convvae.anomaly.scoring import every_score, score_images
from convvae.anomaly.thresholds import (
    calibrate,
    conformal_threshold,
    p_values,
    read_record,
)
from convvae.data.sources import load_source
from convvae.data.splits import make_splits, selection_and_calibration
from convvae.errors import CheckpointError, DataError
from convvae.metrics.detection import detection_metrics, f1_at_threshold, fpr_at_tpr, roc_points
from convvae.metrics.stats import bootstrap_roc_auc
from convvae.training.trainer import Trainer
from tests.conftest import quick_train_config, tiny_model


def likelihood_terms(model, images, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Every likelihood score and ELBO term of a model without a reference."""
    scorer = Scorer(model, None, ScoreSpec("iwae_nll", k, seed))
    return every_score(scorer, np.asarray(images), (*LIKELIHOOD_SCORES, *ELBO_TERMS))


def all_scores(model, images, k: int, seed: int = 0, reference: Reference | None = None):
    """Every score of the benchmark's table that the model (and its reference) gives."""
    scorer = Scorer(model, reference, ScoreSpec("iwae_nll", k, seed))
    return every_score(scorer, images, SCORES if reference is not None else LIKELIHOOD_SCORES)


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
    assert perfect["normal_flagged_at_95_recall"] == 0.0 and perfect["f1"] == 1.0
    assert perfect["anomalies_passed_at_95_normal"] == 0.0
    assert reversed_["roc_auc"] == 0.0 and reversed_["normal_flagged_at_95_recall"] == 1.0
    assert reversed_["anomalies_passed_at_95_normal"] == 1.0


def test_fpr_at_95_tpr_against_a_hand_computed_case():
    # Flagging all 4 anomalies needs a threshold <= 0.4, which also flags the normal 0.9: 1 of 4.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.5, 0.6, 0.8])
    assert fpr_at_tpr(labels, scores, 0.95) == 0.25
    # 3 of 4 anomalies (TPR 0.75) are caught above 0.5, with the normal 0.9: still 1 of 4.
    assert fpr_at_tpr(labels, scores, 0.75) == 0.25
    assert fpr_at_tpr(labels, scores, 0.25) == 0.25  # 0.9 ranks above every anomaly
    # The OOD convention (normal images positive): letting 95% of the normal images pass (all
    # 4: the cut sits above 0.9) passes every anomaly.
    assert fpr_at_tpr(1 - labels, -scores, 0.95) == 1.0


def test_f1_at_a_threshold():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.7, 0.8, 0.2])
    # flagged (> 0.5): 0.6 (normal), 0.7, 0.8 → precision 2/3, recall 2/3.
    result = f1_at_threshold(labels, scores, 0.5)
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert f1_at_threshold(labels, scores, 1.0)["f1"] == 0.0


def test_conformal_threshold_is_the_right_order_statistic_and_holds_its_rate():
    # n = 99, alpha = 0.05: the ceil(100 * 0.95) = 95th smallest of 0..98 is 94.
    assert conformal_threshold(np.arange(99.0)[::-1], 0.05) == 94.0
    # Too few calibration images for the target: the largest one (guarantee 1 / (n + 1)).
    assert conformal_threshold(np.arange(10.0), 0.05) == 9.0
    rng = np.random.default_rng(0)
    realised = []
    for _ in range(200):  # the guarantee is on average over calibration sets
        threshold = conformal_threshold(rng.normal(size=50), 0.1)
        realised.append(np.mean(rng.normal(size=2000) > threshold))
    assert 0.07 < np.mean(realised) <= 0.1 + 0.005
    with pytest.raises(ValueError, match="non-empty"):
        conformal_threshold(np.array([]), 0.05)


def test_p_values_are_conformal():
    calibration = np.array([1.0, 2.0, 3.0, 4.0])
    found = p_values(np.array([0.5, 2.0, 3.5, 10.0]), calibration)
    np.testing.assert_allclose(found, [5 / 5, 4 / 5, 2 / 5, 1 / 5])
    rng = np.random.default_rng(1)
    uniform = p_values(rng.normal(size=20000), rng.normal(size=999))
    assert np.mean(uniform <= 0.05) == pytest.approx(0.05, abs=0.01)  # uniform on normals


def test_validation_images_split_into_disjoint_selection_and_calibration_halves():
    images = np.arange(11)[:, None]
    selection, calibration = selection_and_calibration(images)
    assert len(selection) == 6 and len(calibration) == 5
    assert not set(selection.ravel()) & set(calibration.ravel())
    with pytest.raises(DataError, match="at least 2 are needed") as info:
        selection_and_calibration(images[:1])
    assert "data.max_train_images" in str(info.value) and "\n" not in str(info.value)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_data():
    from sklearn.metrics import roc_auc_score

    widths = []
    for n in (50, 2000):
        labels, scores = separated(n, shift=1.0)
        low, high = bootstrap_roc_auc(labels, scores, n_resamples=300, seed=0)
        assert low <= roc_auc_score(labels, scores) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # about 1/sqrt(40) as wide
    assert bootstrap_roc_auc(labels, scores, 200, seed=1) == bootstrap_roc_auc(
        labels, scores, 200, seed=1
    )
    with pytest.raises(ValueError, match="labels"):
        bootstrap_roc_auc(labels[:10], scores, 100)


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
    images = mnist_slice.test.images[:40]
    first = likelihood_terms(trained, images, k=8, seed=3)
    again = likelihood_terms(trained, images, k=8, seed=3)
    alone = likelihood_terms(trained, images[7:8], k=8, seed=3)
    for name in first:
        assert first[name].shape == (40,) and first[name].dtype == np.float64
        np.testing.assert_array_equal(first[name], again[name])
        np.testing.assert_allclose(alone[name], first[name][7:8], rtol=1e-5)
    # log-mean-exp >= mean of the same log-weights: the IWAE bound is the tighter one.
    assert np.all(first["iwae_nll"] <= first["neg_elbo"] + 1e-9)
    assert np.all(first["recon_nll_at_mean"] > 0)


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
    ours = likelihood_terms(trained, images, k=16, seed=5)
    eps = torch.randn(16, trained.arch.latent_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = naive_iwae_nll(trained, images.float() / 255, eps).double().numpy()
    np.testing.assert_allclose(ours["iwae_nll"], reference, rtol=1e-4)
    np.testing.assert_allclose(ours["neg_elbo"], ours["recon_nll"] + ours["kl"], rtol=1e-9)
    # k = 1 is the single-sample negative ELBO: the IWAE bound and the ELBO coincide.
    one = likelihood_terms(trained, images, k=1, seed=5)
    np.testing.assert_allclose(one["iwae_nll"], one["neg_elbo"], rtol=1e-9)
    # More samples tighten the bound on -log p(x): lower NLL than the ELBO on average.
    assert ours["iwae_nll"].mean() < ours["neg_elbo"].mean() - 0.5


def test_score_images_is_the_named_score_of_every_score(trained, mnist_slice):
    images = mnist_slice.test.images[:20]
    scorer = Scorer(trained, None, ScoreSpec("excess_nll", samples=4, noise_seed=1))
    expected = likelihood_terms(trained, images, 4, 1)["excess_nll"]
    np.testing.assert_array_equal(score_images(scorer, images), expected)
    # Float pixels in [0, 1] (what serving receives) give the same scores as uint8.
    floats = images.astype(np.float32) / 255
    np.testing.assert_allclose(score_images(scorer, floats), expected, rtol=1e-6)
    np.testing.assert_array_equal(
        all_scores(trained, images, 4, 1)["recon_mse"],
        score_images(Scorer(trained, None, ScoreSpec("recon_mse", 4, 1)), images),
    )


def test_calibrate_stores_the_conformal_cut_and_the_calibration_scores(trained, mnist_slice):
    selection, calibration = selection_and_calibration(mnist_slice.val.images)
    scorer = Scorer(trained, None, ScoreSpec("neg_elbo", samples=2))
    record = calibrate(scorer, calibration, 0.1, normal_class=None, data_source="mnist-5k")
    scores = score_images(scorer, calibration)
    stored = record.as_json()
    assert stored["threshold"] == record.threshold == conformal_threshold(scores, 0.1)
    assert stored["calibration_scores"] == sorted(scores.tolist())
    assert stored["target_fpr"] == 0.1 and stored["achievable_fpr"] == 1 / (len(scores) + 1)
    # Held-out normal images are flagged at about the target rate.
    others = score_images(scorer, selection)
    assert np.mean(others > record.threshold) < 0.25
    assert stored["score"] == "neg_elbo" and stored["samples"] == 2
    assert stored["iwae_samples"] == 2  # the old name, written for one release
    assert stored["normal_class"] is None and stored["data_source"] == "mnist-5k"


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
    assert set(scores) == set(LIKELIHOOD_SCORES)  # no reference: the model's own scores
    with pytest.raises(CheckpointError, match="no reference images"):
        every_score(Scorer(model, None, ScoreSpec("iwae_nll", 8)), test.images[:2], SCORES)
    for name in LIKELIHOOD_SCORES:
        metrics = detection_metrics(labels, scores[name], np.median(scores[name]), 200)
        assert metrics["roc_auc"] > 0.9, (name, metrics)


def test_the_reconstruction_mse_is_the_squared_error_of_the_posterior_mean_decode(digit_one):
    model, test = digit_one
    images = test.images[:50]
    x = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        means = torch.sigmoid(model.decode(model.encode(x)[0]))
    expected = (means - x).pow(2).flatten(1).sum(1).double().numpy()
    np.testing.assert_allclose(all_scores(model, images, k=2)["recon_mse"], expected, rtol=1e-5)


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


def test_read_record_and_its_errors(tmp_path):
    path = tmp_path / "threshold.json"
    fields = {
        "score": "iwae_nll",
        "threshold": 12.5,
        "iwae_samples": 8,
        "noise_seed": 0,
        "calibration_scores": [13.0, 10.0, 12.5],
    }
    path.write_text(json.dumps({**fields, "normal_class": 3}))
    record = read_record(path)  # an older record: iwae_samples, no target_fpr
    assert record.spec == ScoreSpec("iwae_nll", 8, 0)
    assert record.threshold == 12.5 and record.normal_class == 3
    decided = record.decide(np.array([11.0, 12.5, 20.0]))
    np.testing.assert_allclose(decided["p_value"], [3 / 4, 3 / 4, 1 / 4])
    assert decided["is_anomaly"].tolist() == [False, False, True]
    # A record written now reads back the same, and names the samples by their new name.
    path.write_text(json.dumps(record.as_json()))
    again = read_record(path)
    assert again.spec == record.spec and again.threshold == record.threshold
    assert json.loads(path.read_text())["samples"] == 8
    # A record of the score formerly called recon_bce loads under its new name.
    path.write_text(json.dumps({**fields, "score": "recon_bce"}))
    assert read_record(path).spec.name == "recon_nll_at_mean"
    with pytest.raises(DataError, match="no threshold file"):
        read_record(tmp_path / "missing.json")
    path.write_text(json.dumps(fields))  # a model trained on every class has no normal class
    assert read_record(path).normal_class is None
    path.write_text(json.dumps({k: v for k, v in fields.items() if k != "threshold"}))
    with pytest.raises(DataError, match="KeyError"):
        read_record(path)
    path.write_text(json.dumps({**fields, "normal_class": 3, "score": "psnr"}))
    with pytest.raises(DataError, match="unknown score"):
        read_record(path)
    path.write_text(json.dumps({**fields, "calibration_scores": []}))
    with pytest.raises(DataError, match="no calibration scores"):
        read_record(path)
    # A stored sample count sizes scoring memory: an untrusted record may not ask for 10**9.
    for samples in (0, 10**9):
        path.write_text(json.dumps({**fields, "iwae_samples": samples}))
        with pytest.raises(DataError, match="samples outside 1..4096"):
            read_record(path)


def test_the_rank_bootstrap_of_roc_auc_equals_the_plain_resampling_loop():
    """The rank formula gives the interval of the plain loop (one roc_auc_score call per
    stratified resample, drawn in the same order), ties included."""
    from sklearn.metrics import roc_auc_score

    labels, scores = separated(60, shift=1.0, seed=4)
    columns = np.stack([scores, np.round(scores)], axis=1)  # the second column has many ties
    rng = np.random.default_rng(2)
    groups = [np.flatnonzero(labels == value) for value in (0, 1)]
    values = []
    for _ in range(300):
        rows = np.concatenate([rng.choice(group, len(group)) for group in groups])
        values.append(np.mean([roc_auc_score(labels[rows], c) for c in columns[rows].T]))
    expected = np.percentile(values, [2.5, 97.5])
    np.testing.assert_allclose(bootstrap_roc_auc(labels, columns, 300, seed=2), expected)
    columns[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_roc_auc(labels, columns, 300, seed=2)


# --- the distance scores and the fused default ----------------------------------------------------


@pytest.fixture(scope="module")
def digit_one_with_reference(digit_one):
    """digit_one's model with its Reference: the training 1s, statistics on held-out 1s."""
    model, test = digit_one
    splits = make_splits(load_source("mnist-5k"), 0.1, 0.2, seed=0)
    ones = splits.train.images[splits.train.labels == 1]
    selection, _ = selection_and_calibration(splits.val.images[splits.val.labels == 1])
    reference = fit_reference(model, ones, selection, samples=4, noise_seed=0)
    return model, test, reference, selection


def test_the_fused_score_is_the_mean_of_its_standardised_components(digit_one_with_reference):
    model, test, reference, selection = digit_one_with_reference
    # On the held-out normal images that set the statistics, each component has mean 0, sd 1.
    on_selection = all_scores(model, selection, k=4, seed=0, reference=reference)
    for name in FUSED_COMPONENTS:
        standardised = (on_selection[name] - reference.center[name]) / reference.scale[name]
        assert standardised.mean() == pytest.approx(0, abs=1e-6)
        assert standardised.std() == pytest.approx(1, rel=1e-6)
    scores = all_scores(model, test.images[:40], k=4, seed=0, reference=reference)
    expected = np.mean(
        [(scores[n] - reference.center[n]) / reference.scale[n] for n in FUSED_COMPONENTS], axis=0
    )
    np.testing.assert_allclose(scores["fused"], expected)
    labels = (test.labels != 1).astype(int)
    fused = all_scores(model, test.images, k=4, seed=0, reference=reference)["fused"]
    assert roc_auc_score(labels, fused) > 0.95


def test_distance_scores_are_kth_neighbour_distances(digit_one_with_reference):
    model, test, reference, _ = digit_one_with_reference
    images = test.images[:7]
    scorer = Scorer(model, reference, ScoreSpec("cosine_knn"))
    scores = every_score(scorer, images, ("hidden_knn", "cosine_knn"))
    x = images.reshape(7, -1).astype(np.float64) / 255
    bank = reference.images.reshape(len(reference.images), -1).astype(np.float64) / 255
    x_unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    bank_unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    distances = np.sqrt(((x_unit[:, None] - bank_unit[None]) ** 2).sum(-1))
    np.testing.assert_allclose(scores["cosine_knn"], np.sort(distances, 1)[:, 4], rtol=1e-4)
    # A blank frame is the zero vector: distance 1 from every normal image's direction.
    blank = np.zeros((1, 1, 28, 28), np.uint8)
    assert score_images(scorer, blank)[0] == pytest.approx(1.0)
    # The hidden distance against the encoder features of the reference images, written out.
    with torch.no_grad():
        hidden = model.encoder(torch.from_numpy(images).float() / 255).double()
        bank = model.encoder(torch.from_numpy(reference.images).float() / 255).double()
    fifth = torch.cdist(hidden, bank).sort(1).values[:, 4].numpy()
    np.testing.assert_allclose(scores["hidden_knn"], fifth, rtol=1e-6)


def test_a_blank_frame_is_flagged_by_the_fused_score(digit_one_with_reference):
    """Out-of-domain: the likelihood alone finds a blank frame more normal than most normal
    images; the cosine distance puts it beyond every one, and the fused score in their tail."""
    model, test, reference, _ = digit_one_with_reference
    ones = test.images[test.labels == 1]
    frames = np.concatenate([np.zeros((1, 1, 28, 28), np.uint8), ones])
    scores = all_scores(model, frames, k=4, seed=0, reference=reference)
    assert scores["excess_nll"][0] < np.median(scores["excess_nll"][1:])
    assert scores["cosine_knn"][0] > scores["cosine_knn"][1:].max()
    assert scores["fused"][0] > np.quantile(scores["fused"][1:], 0.9)


def test_the_reference_travels_in_the_model_file_and_scores_agree(
    digit_one_with_reference, tmp_path
):
    model, test, reference, _ = digit_one_with_reference
    save_fitted_model(model, reference, tmp_path / "model.pt")
    loaded, loaded_reference = load_fitted_model(tmp_path / "model.pt")
    np.testing.assert_array_equal(loaded_reference.images, reference.images)
    assert loaded_reference.center == reference.center
    spec = ScoreSpec("fused", samples=4, noise_seed=0)
    images = test.images[:30]
    ours = score_images(Scorer(model, reference, spec), images)
    scorer = Scorer(loaded, loaded_reference, spec)
    np.testing.assert_allclose(score_images(scorer, images), ours, rtol=1e-9)
    # Float pixels in [0, 1] (what serving receives) give the same fused scores.
    floats = images.astype(np.float32) / 255
    np.testing.assert_allclose(score_images(scorer, floats), ours, rtol=1e-5)


def test_the_contrast_distance_is_the_fifth_neighbour_in_scaled_contrast_statistics(
    digit_one_with_reference,
):
    """contrast_knn written out in numpy: log pixel spread and log mean neighbour difference,
    each divided by its spread over the training images; flat frames are far from every one."""
    model, test, reference, _ = digit_one_with_reference
    images = np.concatenate([test.images[:6], np.full((3, 1, 28, 28), 90, np.uint8)])
    scorer = Scorer(model, reference, ScoreSpec("contrast_knn"))

    def statistics(a):
        x = a.astype(np.float64) / 255
        across = np.abs(np.diff(x, axis=-1)).mean((1, 2, 3))
        down = np.abs(np.diff(x, axis=-2)).mean((1, 2, 3))
        spread = x.reshape(len(x), -1).std(1)
        return np.stack([np.log(spread + 1 / 255), np.log((across + down) / 2 + 1 / 255)], 1)

    bank = statistics(reference.images)
    scale = bank.std(0) + 1e-6
    distances = np.sqrt((((statistics(images) / scale)[:, None] - bank / scale) ** 2).sum(-1))
    expected = np.sort(distances, 1)[:, 4]
    np.testing.assert_allclose(score_images(scorer, images), expected, rtol=1e-6)
    assert expected[6:].min() > 3 * expected[:6].max()  # the flat frames


def test_model_files_written_before_the_split_still_load_their_reference(
    digit_one_with_reference, tmp_path
):
    """Older model files kept the reference under the same key, beside the weights."""
    model, _, reference, _ = digit_one_with_reference
    payload = {
        "format": 1,
        "architecture": dataclasses.asdict(model.arch),
        "state_dict": model.state_dict(),
        "reference": {
            "images": torch.from_numpy(reference.images),
            "center": reference.center,
            "scale": reference.scale,
        },
    }
    torch.save(payload, tmp_path / "old.pt")
    _, loaded = load_fitted_model(tmp_path / "old.pt")
    np.testing.assert_array_equal(loaded.images, reference.images)
    assert loaded.scale == reference.scale
    # A reference fitted before contrast_knn existed fuses the three other parts, as then.
    three = {name: reference.scale[name] for name in ("excess_nll", "hidden_knn", "cosine_knn")}
    older = Reference(reference.images, {k: reference.center[k] for k in three}, three)
    scorer = Scorer(model, older, ScoreSpec("fused", 4, 0))
    assert scorer.fused_parts == ("excess_nll", "hidden_knn", "cosine_knn")
    parts = every_score(scorer, reference.images[:5], (*scorer.fused_parts, "fused"))
    expected = np.mean([(parts[n] - older.center[n]) / three[n] for n in three], axis=0)
    np.testing.assert_allclose(parts["fused"], expected)


def test_scores_that_need_a_reference_are_one_line_without_one(trained):
    needs = "no reference images, which the fused score needs"
    with pytest.raises(CheckpointError, match=needs) as info:
        Scorer(trained, None, ScoreSpec("fused"))
    assert "\n" not in str(info.value)
