"""One score everywhere: `convvae score`, the served pyfunc and the benchmark's scoring give the
same score for the same image, whatever the order and the batch it arrives in."""

import csv
import json

import numpy as np
import pytest

from convvae.anomaly.fit import fit_reference
from convvae.anomaly.reference import save_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.anomaly.thresholds import calibrate
from convvae.data.splits import selection_and_calibration
from convvae.serving import _load_pyfunc
from tests.test_cli import convvae

SPEC = ScoreSpec("fused", samples=8, noise_seed=2)


@pytest.fixture(scope="module")
def stored_model(trained, mnist_slice, tmp_path_factory):
    """The tiny model with its reference and threshold record, saved as a stage saves it."""
    selection, calibration = selection_and_calibration(mnist_slice.val.images)
    reference = fit_reference(
        trained, mnist_slice.train.images, selection, SPEC.samples, SPEC.noise_seed
    )
    scorer = Scorer(trained, reference, SPEC)
    record = calibrate(scorer, calibration, 0.05).as_json()
    folder = tmp_path_factory.mktemp("model")
    save_fitted_model(trained, reference, folder / "model.pt")
    (folder / "threshold.json").write_text(json.dumps(record))
    return scorer, folder, record


def test_cli_pyfunc_and_benchmark_agree_across_orders_and_batches(
    stored_model, mnist_slice, tmp_path
):
    scorer, folder, record = stored_model
    images = mnist_slice.test.images[:60]
    # The benchmark's path: every score of the whole set at once.
    benchmark = every_score(scorer, images, ("iwae_nll", "hidden_knn", "fused"))["fused"]
    # The CLI: the images in reverse order, from a file.
    np.save(tmp_path / "reversed.npy", images[::-1])
    result = convvae("score", "--model", str(folder / "model.pt"), str(tmp_path / "reversed.npy"))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(result.stdout.splitlines()))
    cli = np.array([float(row["score"]) for row in rows])[::-1]
    np.testing.assert_allclose(cli, benchmark, atol=1e-4)  # the CSV keeps 4 decimals
    # The pyfunc: float pixels, shuffled, in three requests of different sizes.
    served = _load_pyfunc(str(folder / "model.pt"), record)
    order = np.random.default_rng(0).permutation(len(images))
    pixels = images[order].astype(np.float32) / 255
    parts = [served.predict(pixels[a:b]) for a, b in ((0, 7), (7, 40), (40, 60))]
    scores = np.empty(len(images))
    scores[order] = np.concatenate([part["score"] for part in parts])
    np.testing.assert_allclose(scores, benchmark, rtol=1e-5, atol=1e-5)  # z-units, near 0
    flags = np.empty(len(images), dtype=bool)
    flags[order] = np.concatenate([part["is_anomaly"] for part in parts])
    assert flags.tolist() == [row["is_anomaly"] == "1" for row in rows][::-1]


def test_a_request_without_images_is_a_clear_error(stored_model):
    # MLflow's server turns a ValueError into a 400 with this message; a bare torch error
    # (aminmax of an empty tensor) would not say what was wrong.
    _, folder, record = stored_model
    served = _load_pyfunc(str(folder / "model.pt"), record)
    with pytest.raises(ValueError, match="no images in the request; send at least one"):
        served.predict(np.zeros((0, 1, 28, 28), np.float32))


def test_larger_images_allow_fewer_per_request() -> None:
    # 1,024 RGB 256 x 256 images are 201 M floats: the budget counts pixel values, not images.
    # An untrained 3 x 128 x 128 network (no reference: the likelihood's deviance) takes
    # 2**22 // 49,152 = 85 images per request; 86 is the one-line 400 reason.
    import torch

    from convvae.model.architecture import Architecture
    from convvae.model.vae import ConvVAE
    from convvae.serving import MAX_BATCH, PIXEL_BUDGET, ScoringModel, max_images

    torch.manual_seed(0)
    arch = Architecture(
        image_size=(128, 128),
        image_channels=3,
        channels=(8, 16),
        encoder_hidden=(64,),
        decoder_hidden=(64,),
        latent_dim=4,
    )
    served = ScoringModel(Scorer(ConvVAE(arch).eval(), None, ScoreSpec("excess_nll", samples=1)))
    assert max_images((3, 128, 128)) == PIXEL_BUDGET // (3 * 128 * 128) == 85 < MAX_BATCH
    with pytest.raises(ValueError, match="86 images in one request; send at most 85 of 3x128x128"):
        served.predict(np.zeros((86, 3, 128, 128), np.float32))
    assert served.predict(np.full((85, 3, 128, 128), 0.5, np.float32))["score"].shape == (85,)
