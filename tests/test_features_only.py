"""Features-only model files (anomaly.store_images: false): no training image in the file, the
same scores from the stored features as from the images, cosine_knn refused in one line, and
forged feature banks refused on load."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from convvae.anomaly.export import INPUT_NAME, OUTPUT_NAMES, export_onnx
from convvae.anomaly.fit import fit_reference
from convvae.anomaly.reference import (
    IMAGE_BANKS,
    Reference,
    load_fitted_model,
    save_fitted_model,
)
from convvae.anomaly.scorer import Scorer, unit_vectors
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.config import parse_params
from convvae.errors import CheckpointError, ConfigError
from convvae.model.files import save_model

SCORES = ("fused", "hidden_knn", "contrast_knn", "patch_knn_guarded", "patch_and_fused")


@pytest.fixture(scope="module")
def references(trained, mnist_slice):
    """The tiny model's reference with its images and without, fitted on the same images."""
    train, held_out = mnist_slice.train.images[:150], mnist_slice.val.images[:40]
    kept = fit_reference(trained, train, held_out, 2, 0)
    features = fit_reference(trained, train, held_out, 2, 0, store_images=False)
    return train, kept, features


def test_the_file_holds_no_training_image(trained, references, tmp_path):
    train, kept, features = references
    assert features.images is None and set(features.image_banks) == set(IMAGE_BANKS)
    save_fitted_model(trained, kept, tmp_path / "kept.pt")
    save_fitted_model(trained, features, tmp_path / "features.pt")
    kept_bytes = (tmp_path / "kept.pt").read_bytes()
    features_bytes = (tmp_path / "features.pt").read_bytes()
    # Each image's raw bytes (the uint8 pixels) are in the usual file and in no features-only one.
    assert all(image.tobytes() in kept_bytes for image in train[:20])
    assert not any(image.tobytes() in features_bytes for image in train)


def test_stored_features_score_as_the_images_do(trained, references, mnist_slice, tmp_path):
    train, kept, features = references
    save_fitted_model(trained, features, tmp_path / "model.pt")
    _, loaded = load_fitted_model(tmp_path / "model.pt")
    # What was stored is what the images give.
    fresh = Scorer(trained, Reference(train, {}, {}), ScoreSpec("excess_nll", 2, 0))
    for name in IMAGE_BANKS:
        torch.testing.assert_close(torch.from_numpy(loaded.image_banks[name]), fresh.bank(name))
    test = mnist_slice.test.images[:64]
    from_file = every_score(Scorer(trained, loaded, ScoreSpec("fused", 2, 0)), test, SCORES)
    with_images = every_score(Scorer(trained, kept, ScoreSpec("fused", 2, 0)), test, SCORES)
    # Distances to the training images are those of the usual reference; fused has three
    # parts (no cosine_knn), so it differs from the usual four-part one.
    for name in ("hidden_knn", "contrast_knn"):
        np.testing.assert_allclose(from_file[name], with_images[name], rtol=1e-6)
    assert "cosine_knn" not in loaded.scale and "cosine_knn" in kept.scale
    assert not np.allclose(from_file["fused"], with_images["fused"])
    assert np.isfinite(from_file["patch_and_fused"]).all()


def test_cosine_knn_from_a_features_only_file_is_one_line_naming_the_setting(
    trained, references, mnist_slice
):
    _, _, features = references
    scorer = Scorer(trained, features, ScoreSpec("fused", 2, 0))  # asked beside its own score
    with pytest.raises(CheckpointError, match="anomaly.store_images: false") as info:
        every_score(scorer, mnist_slice.test.images[:4], ("cosine_knn",))
    assert "\n" not in str(info.value) and "retrain with anomaly.store_images: true" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"hidden_bank": np.zeros((5, 64), np.float64)}, "hidden_bank is float64"),
        ({"contrast_bank": np.zeros((5, 3))}, r"contrast_bank is float64 \(5, 3\)"),
        ({"hidden_bank": np.full((150, 64), np.inf, np.float32)}, "NaN or infinite"),
        ({"contrast_bank": np.zeros((7, 2))}, "different row counts"),
        ({"contrast_bank": None}, "must hold its images or the features"),
        ({"hidden_bank": [[0.0] * 64]}, "hidden bank is a list, not a tensor"),
        ({"hidden_bank": torch.zeros(150, 64, dtype=torch.bfloat16)}, "torch.bfloat16 tensor"),
        ({"hidden_bank": torch.tensor(1.0)}, r"hidden_bank is float32 \(\)"),
        ({"hidden_bank": torch.ones(150, 64, requires_grad=True)}, "NOT REFUSED"),
    ],
)
def test_a_forged_feature_bank_is_refused_in_one_line(
    trained, references, tmp_path, change, complaint
):
    _, _, features = references
    payload = features.payload()
    banks = dict(payload["image_banks"])
    for name, value in change.items():
        if value is None:
            del banks[name]
        else:
            banks[name] = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
    save_model(trained, tmp_path / "model.pt", {"reference": payload | {"image_banks": banks}})
    if complaint == "NOT REFUSED":  # a tensor that tracks gradients is read as its values
        _, loaded = load_fitted_model(tmp_path / "model.pt")
        assert (loaded.image_banks["hidden_bank"] == 1).all()
        return
    with pytest.raises(CheckpointError, match=complaint) as info:
        load_fitted_model(tmp_path / "model.pt")
    assert "\n" not in str(info.value) and "dvc repro -f train" in str(info.value)


def test_the_setting_is_read_from_params():
    assert parse_params({}).anomaly.store_images is True
    assert parse_params({"anomaly": {"store_images": False}}).anomaly.store_images is False
    with pytest.raises(ConfigError, match="anomaly.store_images"):
        parse_params({"anomaly": {"store_images": "sometimes"}})


def test_a_usual_reference_keeps_its_images_and_no_feature_banks(references):
    _, kept, _ = references
    assert kept.images is not None and kept.image_banks == {}
    assert "image_banks" not in kept.payload()
    assert isinstance(Reference.from_payload(kept.payload()).images, np.ndarray)


def test_the_onnx_graph_of_a_features_only_model_scores_the_same_and_holds_no_image(
    trained, references, mnist_slice, tmp_path
):
    train, kept, features = references
    # What the usual graph holds of each image: its unit-length pixels (the cosine_knn bank).
    units = unit_vectors(torch.from_numpy(train).float() / 255).numpy()
    export_onnx(Scorer(trained, kept, ScoreSpec("fused", 2, 0)), tmp_path / "kept.onnx")
    assert units[0].tobytes() in (tmp_path / "kept.onnx").read_bytes()
    scorer = Scorer(trained, features, ScoreSpec("patch_and_fused", 2, 0))
    export_onnx(scorer, tmp_path / "model.onnx")
    graph_bytes = (tmp_path / "model.onnx").read_bytes()
    assert not any(unit.tobytes() in graph_bytes for unit in units)
    pixels = mnist_slice.test.images[:8].astype(np.float32) / 255
    graph = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    score, _ = graph.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
    expected = every_score(scorer, mnist_slice.test.images[:8], ("patch_and_fused",))
    spread = np.ptp(expected["patch_and_fused"])
    np.testing.assert_allclose(score, expected["patch_and_fused"], rtol=1e-4, atol=1e-4 * spread)


@pytest.mark.parametrize(
    ("forged", "complaint"),
    [
        ({"image_banks": torch.zeros(3)}, "must hold its images or the features"),
        ("both", "must hold its images or the features"),  # images and features together
        ({"images": torch.zeros(150, 1, 28, 28)}, r"float32 \(150, 1, 28, 28\), not uint8"),
        ({"images": torch.zeros(150, 3, 28, 28, dtype=torch.uint8)}, "of shape \\(1, 28, 28\\)"),
        ({"patch_bank": None}, "and a patch bank"),
    ],
)
def test_a_forged_reference_is_refused_in_one_line(
    trained, references, tmp_path, forged, complaint
):
    train, kept, features = references
    if forged == "both":
        payload = kept.payload() | {"image_banks": features.payload()["image_banks"]}
    elif "images" in forged:
        payload = kept.payload() | forged
    else:
        payload = {k: v for k, v in features.payload().items() if k not in forged}
        payload |= {k: v for k, v in forged.items() if v is not None}
    save_model(trained, tmp_path / "model.pt", {"reference": payload})
    with pytest.raises(CheckpointError, match=complaint) as info:
        load_fitted_model(tmp_path / "model.pt")
    assert "\n" not in str(info.value) and "dvc repro -f train" in str(info.value)


def test_cosine_knn_without_images_is_refused_before_any_training(trained, references):
    with pytest.raises(ConfigError, match="anomaly.store_images false leaves no cosine_knn"):
        parse_params({"anomaly": {"store_images": False, "score": "cosine_knn"}})
    _, _, features = references
    with pytest.raises(CheckpointError, match="anomaly.store_images: false"):
        Scorer(trained, features, ScoreSpec("cosine_knn", 2, 0))  # a file made by other params
