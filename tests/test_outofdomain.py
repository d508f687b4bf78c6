"""convvae.anomaly.outofdomain: odd inputs made from nothing and from the test images, scored as
usual."""

import numpy as np
import pytest

from convvae.anomaly.fit import fit_reference
from convvae.anomaly.outofdomain import out_of_domain_auroc, out_of_domain_sets
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.data.splits import selection_and_calibration


def test_the_sets_are_shaped_like_the_images_and_made_as_named(mnist_slice):
    images = mnist_slice.test.images
    sets = out_of_domain_sets(images, n=50, seed=3)
    assert set(sets) == {
        "blank",
        "saturated",
        "flat",
        "nearly_flat",
        "uniform_noise",
        "inverted",
        "flipped_left_right",
        "flipped_upside_down",
    }
    for name, odd in sets.items():
        assert odd.shape == (50, *images.shape[1:]) and odd.dtype == np.uint8, name
    assert not sets["blank"].any() and (sets["saturated"] == 255).all()
    np.testing.assert_array_equal(sets["inverted"], 255 - images[:50])
    np.testing.assert_array_equal(sets["flipped_left_right"][:, :, :, 0], images[:50, :, :, -1])
    np.testing.assert_array_equal(sets["flipped_upside_down"][:, :, 0], images[:50, :, -1])
    again = out_of_domain_sets(images, n=50, seed=3)["uniform_noise"]
    np.testing.assert_array_equal(again, sets["uniform_noise"])
    # Flat frames: one level per frame, several levels across the set; nearly flat ones stay
    # within a few tens of grey levels of flat.
    flat = sets["flat"].reshape(50, -1)
    assert (flat.min(1) == flat.max(1)).all() and len(np.unique(flat[:, 0])) > 10
    near = sets["nearly_flat"].reshape(50, -1).astype(int)
    spread = near.max(1) - near.min(1)
    assert (spread > 0).any() and (spread <= 45).all()


@pytest.fixture(scope="module")
def reference(trained, mnist_slice):
    selection, _ = selection_and_calibration(mnist_slice.val.images)
    return fit_reference(trained, mnist_slice.train.images, selection, samples=4, noise_seed=0)


def test_frames_noise_and_inverted_digits_are_flagged_by_the_fused_score(
    trained, reference, mnist_slice
):
    scorer = Scorer(trained, reference, ScoreSpec("fused", samples=4, noise_seed=0))
    aurocs = out_of_domain_auroc(scorer, mnist_slice.test.images)
    assert all(0 <= value <= 1 for value in aurocs.values())
    for name in ("blank", "saturated", "flat", "nearly_flat", "uniform_noise", "inverted"):
        assert aurocs[name] > 0.9, (name, aurocs)


def test_the_likelihood_alone_takes_blank_frames_for_normal_digits(trained, reference, mnist_slice):
    """Why the default is fused: the deviance of an empty frame (Bernoulli here) is small."""
    scorer = Scorer(trained, reference, ScoreSpec("excess_nll", samples=4, noise_seed=0))
    aurocs = out_of_domain_auroc(scorer, mnist_slice.test.images)
    assert aurocs["blank"] < 0.5 and aurocs["uniform_noise"] > 0.9
