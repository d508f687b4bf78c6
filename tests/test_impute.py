"""Masks, fixed-point imputation and its two baselines, on real digits."""

import numpy as np
import pytest
import torch
from PIL import Image

from convvae.data.images import to_unit_interval
from convvae.errors import DataError
from convvae.uses.impute import (
    imputation_benchmark,
    impute,
    make_mask,
    mean_fill,
    missing_pixel_errors,
    nearest_neighbour_fill,
    save_imputation_grid,
)

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def images(mnist_slice):
    return torch.from_numpy(mnist_slice.test.images[:128])


def test_mask_kinds():
    center = make_mask("center", 2, SHAPE)
    assert center.shape == (2, 1, 28, 28) and center.float().mean() == 0.25
    assert center[0, 0, 14, 14] and not center[0, 0, 0, 0]
    left = make_mask("left-half", 1, SHAPE)
    assert left[0, 0, :, :14].all() and not left[0, 0, :, 14:].any()
    random = make_mask("random:0.3", 50, SHAPE, seed=1)
    assert abs(random.float().mean().item() - 0.3) < 0.01
    assert not torch.equal(random[0], random[1])  # drawn per image
    assert torch.equal(random, make_mask("random:0.3", 50, SHAPE, seed=1))


def test_mask_png(tmp_path):
    pixels = np.zeros((28, 28), np.uint8)
    pixels[:5] = 255
    Image.fromarray(pixels, mode="L").save(tmp_path / "top.png")
    mask = make_mask(str(tmp_path / "top.png"), 3, SHAPE)
    assert mask.shape == (3, 1, 28, 28) and mask[:, :, :5].all() and not mask[:, :, 5:].any()
    # Black and white (mode "1"), and a grey mask for an RGB model: every channel follows it.
    Image.fromarray(pixels, mode="L").convert("1").save(tmp_path / "top_1bit.png")
    assert torch.equal(make_mask(str(tmp_path / "top_1bit.png"), 3, SHAPE), mask)
    Image.fromarray(pixels, mode="L").convert("RGB").save(tmp_path / "top_rgb.png")
    assert torch.equal(make_mask(str(tmp_path / "top_rgb.png"), 3, SHAPE), mask)  # grey in RGB
    rgb = make_mask(str(tmp_path / "top.png"), 2, (3, 28, 28))
    assert rgb.shape == (2, 3, 28, 28) and rgb[:, :, :5].all() and not rgb[:, :, 5:].any()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("middle", "unknown kind"),
        ("random:1.5", "0 < P < 1"),
        ("random:half", "0 < P < 1"),
        ("{tmp}/grey.png", "0 \\(known\\) or 255 \\(missing\\)"),
        ("{tmp}/big.png", "32x32 pixels, the model expects 28x28"),
        ("{tmp}/black.png", "marks no pixel missing"),
        ("{tmp}/absent.png", "no such file"),
        ("{tmp}/colour.png", "a mask is one grey channel, this image is mode RGB"),
    ],
)
def test_bad_masks_are_one_line_errors(tmp_path, spec, message):
    Image.fromarray(np.full((28, 28), 128, np.uint8), mode="L").save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(tmp_path / "big.png")
    Image.fromarray(np.zeros((28, 28), np.uint8), mode="L").save(tmp_path / "black.png")
    colour = np.zeros((28, 28, 3), np.uint8)
    colour[:5, :, 0] = 255  # red: not black and white
    Image.fromarray(colour, mode="RGB").save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=message) as err:
        make_mask(spec.format(tmp=tmp_path), 1, SHAPE)
    assert "\n" not in str(err.value)


def test_imputation_keeps_known_pixels_and_converges(trained, train_images, images):
    missing = make_mask("center", len(images), SHAPE)
    fill = mean_fill(train_images)
    filled = impute(trained, images, missing, fill, iterations=10)
    truth = to_unit_interval(images)
    assert torch.equal(filled[~missing], truth[~missing])
    assert filled.min() >= 0 and filled.max() <= 1
    # A fixed point: more rounds change nothing that matters.
    more = impute(trained, images, missing, fill, iterations=30)
    assert (more - filled).abs().max() < 1e-3
    vae = missing_pixel_errors(filled, images, missing)
    mean = missing_pixel_errors(torch.where(missing, fill, truth), images, missing)
    # Measured: the tiny 4-d model of the fixture does NOT beat the training mean in the
    # centre (MSE 0.174 vs 0.171); the default model on mnist-5k does (0.150 vs 0.172, README).
    # So only closeness to the baseline is asserted here.
    assert vae["mse"] < 1.1 * mean["mse"]
    assert vae["bce_nats"] < 1.1 * mean["bce_nats"]


def test_nearest_neighbour_matches_brute_force_and_finds_training_images(train_images):
    queries = train_images[:20]
    missing = make_mask("random:0.5", 20, SHAPE, seed=3)
    filled = nearest_neighbour_fill(train_images, queries, missing, batch_size=7)
    # A training image is its own neighbour on any known pixels: nothing is lost.
    torch.testing.assert_close(filled, to_unit_interval(queries))
    # With one shared mask, the same as torch.cdist on the known pixels.
    shared = make_mask("left-half", 20, SHAPE)
    other = train_images[100:120]
    known = ~shared[0].flatten()
    flat_train = to_unit_interval(train_images).flatten(1)
    nearest = torch.cdist(to_unit_interval(other).flatten(1)[:, known], flat_train[:, known])
    expected = flat_train[nearest.argmin(1)].view(20, *SHAPE)
    filled = nearest_neighbour_fill(train_images, other, shared)
    torch.testing.assert_close(filled[shared], expected[shared])


def test_benchmark_reports_every_mask_and_method(trained, train_images, images, tmp_path):
    results, figure = imputation_benchmark(trained, train_images, images[:16], iterations=3)
    assert list(results) == ["center", "left-half", "random-0.5"]
    assert set(results["center"]) == {
        "missing_fraction",
        *(
            f"{m}_{e}"
            for m in ("vae", "train_mean", "nearest_neighbour")
            for e in ("mse", "bce_nats")
        ),
    }
    save_imputation_grid(*figure, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (2 + 8 * 30, 2 + 9 * 30)  # 3 masks x (masked, imputed, truth)
