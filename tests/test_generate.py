"""Sampling, latent walks, the feature classifier and the Fréchet distance, on real digits."""

import numpy as np
import pytest
import torch

from convvae.data.images import image_grid
from convvae.uses.evaluation import reconstruct
from convvae.uses.generate import (
    classifier_accuracy,
    classifier_features,
    frechet_distance,
    interpolate,
    sample_quality,
    train_classifier,
)


@pytest.fixture(scope="module")
def classifier(mnist_slice):
    return train_classifier(
        torch.from_numpy(mnist_slice.train.images), mnist_slice.train.labels, epochs=8
    )


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
    features = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(features, features) == pytest.approx(0, abs=1e-6)
    shifted = [frechet_distance(features, features + shift) for shift in (0.5, 1.0, 2.0)]
    # A pure mean shift of s in 8 dimensions is exactly 8 s².
    assert shifted == pytest.approx([8 * 0.25, 8 * 1.0, 8 * 4.0], rel=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(features, features[:, :4])


def test_classifier_learns_digits(classifier, mnist_slice):
    accuracy = classifier_accuracy(
        classifier, torch.from_numpy(mnist_slice.test.images), mnist_slice.test.labels
    )
    assert accuracy > 0.6  # 256 training digits, 10 classes: chance is 0.1
    features = classifier_features(classifier, torch.from_numpy(mnist_slice.test.images[:5]))
    assert features.shape == (5, 64) and features.dtype == np.float64


def test_samples_of_a_trained_model_are_closer_to_digits_than_noise(
    trained, classifier, mnist_slice
):
    test = torch.from_numpy(mnist_slice.test.images)
    reference = classifier_features(classifier, test[:128])
    samples = classifier_features(classifier, torch.sigmoid(trained.decode(torch.randn(128, 4))))
    noise = classifier_features(classifier, torch.rand(128, 1, 28, 28))
    real = classifier_features(classifier, test[128:])
    floor = frechet_distance(real, reference)
    from_samples = frechet_distance(samples, reference)
    assert floor < from_samples < frechet_distance(noise, reference)


def test_sample_quality_reports_score_floor_and_accuracy(trained, mnist_slice):
    train = (torch.from_numpy(mnist_slice.train.images), mnist_slice.train.labels)
    test = (torch.from_numpy(mnist_slice.test.images), mnist_slice.test.labels)
    quality = sample_quality(trained, train, test, classifier_epochs=2)
    assert quality["frechet_images"] == 128
    assert 0 < quality["frechet_distance_real_floor"] < quality["frechet_distance_samples"]
    assert 0 < quality["classifier_test_accuracy"] <= 1


def test_interpolation_starts_and_ends_at_the_reconstructions(trained, mnist_slice):
    a, b = torch.from_numpy(mnist_slice.test.images[:2])
    walk = interpolate(trained, a, b, steps=7)
    assert walk.shape == (7, 1, 28, 28)
    ends = reconstruct(trained, torch.stack([a, b]))
    torch.testing.assert_close(walk[[0, -1]], ends, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="steps"):
        interpolate(trained, a, b, steps=1)


def test_image_grid_is_uint8_with_the_image_channels():
    grid = image_grid(torch.rand(10, 1, 28, 28))
    assert grid.dtype == np.uint8 and grid.shape == (1, 2 + 3 * 30, 2 + 4 * 30)  # 4 per row, 3 rows
