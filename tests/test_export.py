"""convvae.anomaly.export: the ONNX graph computes what the package computes, run by ONNX Runtime
on real
digits and real RGB texture patches, for each likelihood, at any batch size."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from convvae.anomaly.export import INPUT_NAME, OUTPUT_NAMES, export_onnx
from convvae.anomaly.fit import fit_reference
from convvae.anomaly.reference import Reference
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import anomaly_maps, score_images
from convvae.errors import CheckpointError
from convvae.model.architecture import Architecture
from convvae.model.vae import ConvVAE
from convvae.training.trainer import Trainer
from tests.conftest import quick_train_config, tiny_model
from tests.mvtec import good_patches

RGB = Architecture(
    image_channels=3,
    image_size=(16, 16),
    channels=(8, 16),
    encoder_hidden=(32,),
    decoder_hidden=(32,),
    latent_dim=4,
)


def session(path: Path) -> ort.InferenceSession:
    """One thread: the test machine's cores are shared."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(graph: ort.InferenceSession, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    score, maps = graph.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
    return score, maps


def assert_close(
    score: np.ndarray, maps: np.ndarray, expected_score: np.ndarray, expected_maps: np.ndarray
) -> None:
    """Scores to 1e-4 relative, or 1e-4 of their spread (fused values near 0 carry the float32
    rounding of an excess_nll of thousands of nats, divided by its standard deviation); maps to
    1e-4 relative, or 1e-5 of their largest value."""
    assert score.shape == expected_score.shape and maps.shape == expected_maps.shape
    assert score.dtype == maps.dtype == np.float32
    spread = np.ptp(expected_score)
    np.testing.assert_allclose(score, expected_score, rtol=1e-4, atol=1e-4 * spread)
    scale = np.abs(expected_maps).max()
    np.testing.assert_allclose(maps, expected_maps, rtol=1e-4, atol=1e-5 * scale)


def assert_matches_package(graph: ort.InferenceSession, scorer: Scorer, pixels: np.ndarray) -> None:
    score, maps = run(graph, pixels)
    assert_close(score, maps, score_images(scorer, pixels), anomaly_maps(scorer, pixels))


@pytest.fixture(scope="module")
def digits_reference(trained: ConvVAE, mnist_slice) -> Reference:
    """The session's Bernoulli model's reference."""
    return fit_reference(trained, mnist_slice.train.images[:200], mnist_slice.val.images[:64], 8, 0)


@pytest.fixture(scope="module")
def test_digits(mnist_slice) -> np.ndarray:
    return (mnist_slice.test.images[:50] / 255).astype(np.float32)


@pytest.fixture(scope="module")
def digit_maps(trained, digits_reference, test_digits) -> np.ndarray:
    return anomaly_maps(Scorer(trained, digits_reference, ScoreSpec("fused")), test_digits)


@dataclass(frozen=True)
class Exported:
    """A graph exported for ``spec`` and its outputs on the 50 test digits."""

    scorer: Scorer
    graph: ort.InferenceSession
    score: np.ndarray
    maps: np.ndarray


@pytest.fixture(scope="module", params=["fused", "excess_nll", "iwae_nll", "patch_and_fused"])
def exported(request, trained, digits_reference, test_digits, tmp_path_factory) -> Exported:
    scorer = Scorer(trained, digits_reference, ScoreSpec(request.param, samples=8, noise_seed=0))
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(scorer, out)
    graph = session(out)
    return Exported(scorer, graph, *run(graph, test_digits))


def test_the_graph_scores_and_maps_digits_as_the_package_does(exported, test_digits, digit_maps):
    assert [i.name for i in exported.graph.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in exported.graph.get_outputs()] == list(OUTPUT_NAMES)
    expected = score_images(exported.scorer, test_digits)
    assert_close(exported.score, exported.maps, expected, digit_maps)


def test_an_images_values_do_not_depend_on_its_batch(exported, test_digits):
    for start, size in ((3, 1), (10, 7)):
        score, maps = run(exported.graph, test_digits[start : start + size])
        rows = slice(start, start + size)
        np.testing.assert_allclose(score, exported.score[rows], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(maps, exported.maps[rows], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("likelihood", ["gaussian", "discretized_logistic"])
def test_rgb_models_of_the_other_likelihoods_match_the_package(likelihood, tmp_path):
    patches = torch.from_numpy(good_patches(True, 16, 120, 0))
    torch.manual_seed(0)
    model = ConvVAE(replace(RGB, likelihood=likelihood))
    model = (
        Trainer(model, quick_train_config(epochs=2), progress=False)
        .fit(patches[:100], patches[100:])
        .model
    )
    reference = fit_reference(model, patches[:100].numpy(), patches[100:].numpy(), 8, 0)
    scorer = Scorer(model, reference, ScoreSpec("fused", samples=8, noise_seed=0))
    export_onnx(scorer, tmp_path / "rgb.onnx")
    pixels = (good_patches(True, 16, 30, 1) / 255).astype(np.float32)
    assert_matches_package(session(tmp_path / "rgb.onnx"), scorer, pixels)


def test_a_model_without_reference_exports_its_likelihood_score_and_deviance_map(
    trained, test_digits, tmp_path
):
    scorer = Scorer(trained, None, ScoreSpec("excess_nll", samples=8, noise_seed=0))
    export_onnx(scorer, tmp_path / "plain.onnx")
    assert_matches_package(session(tmp_path / "plain.onnx"), scorer, test_digits)


def test_a_score_that_needs_a_reference_is_a_one_line_error_without_one(tmp_path):
    with pytest.raises(CheckpointError, match="no reference images") as err:
        export_onnx(Scorer(tiny_model(), None, ScoreSpec("fused")), tmp_path / "model.onnx")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_convvae_export_writes_a_graph_that_scores_as_convvae_score(trained, mnist_slice, tmp_path):
    """The command line end to end: export a model folder's model, run the file in ONNX Runtime,
    compare with `convvae score`'s CSV for the same images; the threshold record goes beside."""
    import csv
    import json

    from convvae.anomaly.reference import save_fitted_model
    from convvae.anomaly.thresholds import calibrate
    from convvae.data.splits import selection_and_calibration
    from tests.test_cli import convvae

    selection, calibration = selection_and_calibration(mnist_slice.val.images)
    reference = fit_reference(trained, mnist_slice.train.images[:200], selection, 4, 0)
    save_fitted_model(trained, reference, tmp_path / "model.pt")
    scorer = Scorer(trained, reference, ScoreSpec("fused", 4, 0))
    record = calibrate(scorer, calibration, 0.05).as_json()
    (tmp_path / "threshold.json").write_text(json.dumps(record))
    out = tmp_path / "deploy" / "convvae.onnx"
    done = convvae("export", "--model", str(tmp_path / "model.pt"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.with_suffix(".threshold.json").read_text()) == record
    images = mnist_slice.test.images[:20]
    np.save(tmp_path / "images.npy", images)
    scored = convvae("score", "--model", str(tmp_path / "model.pt"), str(tmp_path / "images.npy"))
    expected = np.array([float(r["score"]) for r in csv.DictReader(scored.stdout.splitlines())])
    score, _ = run(session(out), images.astype(np.float32) / 255)
    spread = np.ptp(expected)  # the CSV rounds to 4 decimals
    np.testing.assert_allclose(score, expected, rtol=1e-4, atol=max(1e-4 * spread, 6e-5))
