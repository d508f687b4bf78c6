"""The promotion gate: paired bootstrap, aliases, audit tags, dry runs."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from convvae.data.splits import selection_and_calibration
from convvae.errors import TrackingError
from convvae.metrics.stats import paired_bootstrap
from convvae.model.files import save_model
from convvae.tracking.promote import promote
from tests.conftest import tiny_model

NAME = "convvae-unit"


def test_bootstrap_finds_a_real_improvement_and_ignores_noise():
    rng = np.random.default_rng(0)
    champion = rng.normal(100, 10, 500)
    better = champion - 1 + rng.normal(0, 0.5, 500)
    same = champion + rng.normal(0, 0.5, 500)
    clear = paired_bootstrap(champion, better)
    assert (
        clear.significant and clear.ci_low < 1 < clear.ci_high and clear.no_improvement_share < 0.01
    )
    noise = paired_bootstrap(champion, same)
    assert not noise.significant and noise.ci_low < 0 < noise.ci_high
    assert paired_bootstrap(champion, better) == clear  # seeded: reproducible
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap(champion, better[:-1])


def register(local_tracker, model, tmp_path, example) -> str:
    """A version registered without a threshold record (incomplete, as before 0.2)."""
    path = tmp_path / "model.pt"
    save_model(model, path)
    with local_tracker.run():
        return local_tracker.log_model(model, path, example, NAME, {})


def test_promotion_gate(local_tracker, tmp_path, trained, mnist_slice):
    images = selection_and_calibration(mnist_slice.val.images)  # never the test split
    halves = {"train": mnist_slice.train.images, "selection": images[0],
              "calibration": images[1]}  # fmt: skip
    example = mnist_slice.val.images[:2].astype(np.float32) / 255

    def register(local_tracker, model, tmp_path, example):
        return register_scorer(local_tracker, model, tmp_path, example, halves)

    register(local_tracker, tiny_model(seed=5), tmp_path, example)  # v1: untrained

    first = promote(local_tracker, NAME, images, "neg_elbo", dry_run=False)
    assert first.promoted and first.champion is None
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"

    register(local_tracker, trained, tmp_path, example)  # v2: trained, much better
    dry = promote(local_tracker, NAME, images, "neg_elbo", dry_run=True)
    assert dry.promoted and dry.comparison.significant
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"  # unchanged
    assert "gate.compared" not in client.get_model_version(NAME, "2").tags

    second = promote(local_tracker, NAME, images, "neg_elbo", dry_run=False)
    assert second.promoted and second.comparison.improvement > 10
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert json.loads(tags["promotion.audit"])["from"] == "1"
    assert float(tags["gate.neg_elbo.no_improvement_share"]) < 0.01
    assert "gate.compared" in client.get_model_version(NAME, "1").tags

    register(local_tracker, trained, tmp_path, example)  # v3: the same weights again
    third = promote(local_tracker, NAME, images, "neg_elbo", dry_run=False)
    assert not third.promoted and "not better than noise" in third.reason
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"
    history = client.get_registered_model(NAME).tags
    assert len([k for k in history if k.startswith("champion.history.")]) >= 1


def test_unknown_model_lists_what_exists(local_tracker, tmp_path, mnist_slice):
    images = selection_and_calibration(mnist_slice.val.images)
    example = mnist_slice.val.images[:2].astype(np.float32) / 255
    register(local_tracker, tiny_model(), tmp_path, example)
    with pytest.raises(TrackingError, match=f"registered models: {NAME}"):
        promote(local_tracker, "convvae-nope", images, "neg_elbo", dry_run=True)


def register_scorer(local_tracker, model, tmp_path, example, calibration, threshold=None) -> str:
    """A version with a fused threshold record (as evaluate registers it); ``threshold``
    overrides the conformal cut (a broken record)."""
    from convvae.anomaly.fit import fit_reference
    from convvae.anomaly.reference import save_fitted_model
    from convvae.anomaly.scorer import Scorer
    from convvae.anomaly.scores import ScoreSpec
    from convvae.anomaly.thresholds import THRESHOLD_TAG, calibrate

    reference = fit_reference(model, calibration["train"], calibration["selection"], 4, 0)
    scorer = Scorer(model, reference, ScoreSpec("fused", 4, 0))
    record = calibrate(scorer, calibration["calibration"], 0.05).as_json()
    if threshold is not None:
        record["threshold"] = threshold
    path = tmp_path / "model.pt"
    save_fitted_model(model, reference, path)
    tags = {THRESHOLD_TAG: json.dumps(record)}  # as evaluate tags the version
    with local_tracker.run():
        return local_tracker.log_model(model, path, example, NAME, tags, record)


def test_the_anomaly_gate_refuses_a_threshold_that_flags_normal_images(
    local_tracker, tmp_path, trained, mnist_slice
):
    selection, calibration = selection_and_calibration(mnist_slice.val.images)
    halves = {"train": mnist_slice.train.images, "selection": selection,
              "calibration": calibration}  # fmt: skip
    example = selection[:2].astype(np.float32) / 255
    register_scorer(local_tracker, tiny_model(seed=5), tmp_path, example, halves)  # v1
    validation = (selection, calibration)
    assert promote(local_tracker, NAME, validation, "neg_elbo", False).promoted
    # v2: much better likelihood, but a threshold below every score: flags every normal image.
    register_scorer(local_tracker, trained, tmp_path, example, halves, threshold=-1e9)
    decision = promote(local_tracker, NAME, validation, "neg_elbo", False)
    assert decision.comparison.significant and not decision.promoted
    assert "flags 100.0% of normal selection images" in decision.reason
    challenger = next(c for c in decision.checks if c.version == "2")
    assert challenger.realised_fpr == 1.0 and not challenger.fpr_ok
    assert 0.5 <= challenger.out_of_domain_roc_auc <= 1
    tags = mlflow.MlflowClient().get_model_version(NAME, "2").tags
    assert tags["gate.anomaly.v2.realised_fpr"] == "1.0"
    assert tags["gate.split"].startswith("likelihood: validation calibration half")
    # v3: the same trained model with its honest conformal threshold passes both gates.
    register_scorer(local_tracker, trained, tmp_path, example, halves)
    third = promote(local_tracker, NAME, validation, "neg_elbo", False)
    assert third.promoted, third.reason
    mine = next(c for c in third.checks if c.version == "3")
    assert mine.fpr_ok and mine.realised_fpr <= mine.fpr_limit


def test_only_complete_versions_are_promoted_or_served(
    local_tracker, tmp_path, trained, mnist_slice, monkeypatch
):
    from convvae.anomaly.thresholds import THRESHOLD_TAG
    from convvae.errors import TrackingError
    from convvae.tracking.modelref import load_detector_ref
    from convvae.tracking.registry import MODEL_DIGEST_TAG

    selection, calibration = selection_and_calibration(mnist_slice.val.images)
    halves = {"train": mnist_slice.train.images, "selection": selection,
              "calibration": calibration}  # fmt: skip
    example = selection[:2].astype(np.float32) / 255
    validation = (selection, calibration)
    # The version and its tags are created in one call: tagging after creation never runs.
    client = mlflow.MlflowClient()

    def no_late_tags(*args, **kwargs):
        raise AssertionError("a version was tagged after it was created")

    monkeypatch.setattr(mlflow.MlflowClient, "set_model_version_tag", no_late_tags)
    register_scorer(local_tracker, tiny_model(seed=5), tmp_path, example, halves)  # v1
    monkeypatch.undo()
    assert THRESHOLD_TAG in client.get_model_version(NAME, "1").tags
    assert promote(local_tracker, NAME, validation, "neg_elbo", False).promoted
    # v2 has no threshold record (an interrupted or hand-made registration): it would skip
    # the anomaly gate, so promote refuses it, as the CLI does.
    register(local_tracker, trained, tmp_path, example)
    with pytest.raises(TrackingError, match=f"version 2\\) has no {THRESHOLD_TAG} tag"):
        promote(local_tracker, NAME, validation, "neg_elbo", False)
    with pytest.raises(TrackingError, match="has no anomaly.threshold tag"):
        load_detector_ref(f"models:/{NAME}/2")
    # v1's tag edited after registration (a looser threshold): the served model still holds
    # the original record, so the CLI refuses rather than decide with another threshold.
    record = json.loads(client.get_model_version(NAME, "1").tags[THRESHOLD_TAG])
    client.set_model_version_tag(NAME, "1", THRESHOLD_TAG, json.dumps({**record, "threshold": 1e9}))
    with pytest.raises(TrackingError, match="tag differs from the threshold record its served"):
        load_detector_ref(f"models:/{NAME}@champion")
    # The tag restored, v1 loads again; then its model file is overwritten in the artifact
    # store (by anyone who can write there) with another valid model file: the digest
    # recorded at registration refuses it.
    client.set_model_version_tag(NAME, "1", THRESHOLD_TAG, json.dumps(record))
    assert MODEL_DIGEST_TAG in client.get_model_version(NAME, "1").tags
    load_detector_ref(f"models:/{NAME}@champion")
    stored = stored_model_file(client, "1")
    registered = stored.read_bytes()
    stored.write_bytes(stored_model_file(client, "2").read_bytes())
    with pytest.raises(TrackingError, match="model file is not the one registered"):
        load_detector_ref(f"models:/{NAME}@champion")
    # A champion registered before digests were recorded (its tag deleted here) still competes;
    # a challenger without one is refused.
    stored.write_bytes(registered)
    client.delete_model_version_tag(NAME, "1", MODEL_DIGEST_TAG)
    register_scorer(local_tracker, tiny_model(seed=6), tmp_path, example, halves)  # v3
    assert promote(local_tracker, NAME, validation, "neg_elbo", False).checks
    client.delete_model_version_tag(NAME, "3", MODEL_DIGEST_TAG)
    with pytest.raises(TrackingError, match=f"version 3\\) has no {MODEL_DIGEST_TAG} tag"):
        promote(local_tracker, NAME, validation, "neg_elbo", False)


def stored_model_file(client, version: str) -> Path:
    """The model file of a version, where the local artifact store keeps it."""
    source = client.get_model_version(NAME, version).source  # models:/m-<logged model id>
    location = client.get_logged_model(source.split("/")[-1]).artifact_location
    return Path(location.removeprefix("file://")) / "data" / "model.pt"
