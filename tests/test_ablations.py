"""The ablations run beside the default (convvae.benchmark.ablations): the untrained network is
the one training starts from, the pixel patch search reads raw pixel patches, and the class
benchmark measures the untrained default on real digits with its threshold set as the peers'."""

import numpy as np
import pytest
import torch
from torch.nn import functional

from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.benchmark.ablations import (
    VAE_FREE,
    pixel_patch_scorer,
    untrained_model,
    untrained_scorer,
)
from convvae.benchmark.oneclass import class_images, run_ablations
from convvae.config import parse_params
from convvae.data.splits import selection_and_calibration
from convvae.training import recipe
from tests.conftest import quick_train_config

TINY_MODEL = {"channels": [8, 16], "encoder_hidden": [64], "decoder_hidden": [64], "latent_dim": 4}


@pytest.fixture(scope="module")
def params():
    return parse_params(
        {
            "model": TINY_MODEL,
            "anomaly": {"score": "fused", "samples": 2},
            "benchmark": {"seeds": 2, "peers": []},
            "train": {"seed": 3},
        }
    )


def test_the_untrained_model_is_the_one_training_starts_from(params, mnist_slice, monkeypatch):
    images = mnist_slice.train.images[:64]
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    model = untrained_model(params.model, images.shape[1:], seed=3)
    assert torch.equal(torch.rand(3), before)  # the global random state is untouched

    class Started(Exception):
        pass

    def capture(network, *args, **kwargs):  # the trainer train_vae builds, before any step
        raise Started(network)

    monkeypatch.setattr(recipe, "Trainer", capture)
    with pytest.raises(Started) as started:
        recipe.train_vae(
            params.model,
            quick_train_config(seed=3),
            torch.from_numpy(images),
            torch.from_numpy(mnist_slice.val.images[:32]),
        )
    initial = started.value.args[0].state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(initial[name], value), name
    other = untrained_model(params.model, images.shape[1:], seed=4)
    assert not torch.equal(other.encoder[0].weight, model.encoder[0].weight)


def test_the_pixel_patch_search_reads_raw_pixel_patches(params, mnist_slice):
    """Its patch features are the pixels of each first-convolution window (zero padding), so
    its map is the distance to the nearest raw pixel patch of the training images."""
    images = mnist_slice.train.images[:40]
    scorer = pixel_patch_scorer(params.model, images)
    first = untrained_model(params.model, images.shape[1:], 0).encoder[0]
    x = torch.from_numpy(images[:3]).float() / 255
    features = scorer.model.patch_features(x)
    windows = functional.unfold(x, first.kernel_size, padding=first.padding, stride=first.stride)
    torch.testing.assert_close(features.flatten(2), windows, rtol=0, atol=1e-6)
    assert features.shape[-2:] == scorer.model.patch_grid
    # A training image's own patches are in the bank: its most unusual patch is at distance 0,
    # while a digit it never saw has patches it does not hold.
    own = every_score(scorer, images[:5], ("patch_knn",))["patch_knn"]
    unseen = every_score(scorer, mnist_slice.test.images[:5], ("patch_knn",))["patch_knn"]
    np.testing.assert_allclose(own, 0, atol=1e-5)
    assert (unseen > 1e-3).all()


def test_the_untrained_scorer_scores_as_the_default_with_its_own_reference(params, mnist_slice):
    train = mnist_slice.train.images[:96]
    selection, _ = selection_and_calibration(mnist_slice.val.images[:64])
    spec = ScoreSpec.from_config(params.anomaly)
    scorer = untrained_scorer(params.model, params.anomaly, train, selection, spec, seed=3)
    assert isinstance(scorer, Scorer) and scorer.spec == spec
    # its fused statistics are the untrained network's, on the same held-out images
    assert scorer.reference.scale.keys() >= {"excess_nll", "hidden_knn", "cosine_knn"}
    untrained_weights = untrained_model(params.model, train.shape[1:], 3).state_dict()
    for name, value in scorer.model.state_dict().items():
        assert torch.equal(untrained_weights[name], value), name


def test_the_class_benchmark_runs_the_untrained_default_once_per_seed(params, mnist_slice):
    train_normal = class_images(mnist_slice.train, 1, "training")
    val_normal = class_images(mnist_slice.val, 1, "validation")
    test_images = mnist_slice.test.images
    found = run_ablations(params, train_normal, val_normal, test_images)
    assert list(found) == ["untrained_encoder"]
    run = found["untrained_encoder"]
    assert run.test_scores.shape == (len(test_images), params.benchmark.seeds)
    assert np.isfinite(run.test_scores).all() and np.isfinite(run.thresholds).all()
    # each benchmark seed is its own untrained network (train.seed + seed)
    assert not np.allclose(run.test_scores[:, 0], run.test_scores[:, 1])
    again = run_ablations(params, train_normal, val_normal, test_images)["untrained_encoder"]
    np.testing.assert_array_equal(again.test_scores, run.test_scores)
    assert run.fit_seconds > 0 and run.score_seconds > 0
    assert "untrained_encoder" in VAE_FREE
