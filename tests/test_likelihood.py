"""The pixel likelihoods: true probabilities where they claim to be; floors below every fit."""

import math

import pytest
import torch
from torch.distributions import Normal

from convvae.model.likelihood import (
    GAUSSIAN_LOG_STD_MIN,
    LIKELIHOODS,
    OUTPUTS_PER_CHANNEL,
    bits_per_dim,
    pixel_floor,
    pixel_mean,
    pixel_nll,
)

GRID = torch.arange(256, dtype=torch.float32) / 255  # every 8-bit pixel value


def test_discretized_logistic_is_a_probability_of_the_8_bit_pixel():
    torch.manual_seed(0)
    for location, log_scale in [(-1.2, -7.0), (-0.3, -3.0), (0.0, 0.5), (0.9, -5.0), (1.5, -1.0)]:
        out = torch.tensor([location, log_scale]).view(1, 2, 1, 1).expand(256, 2, 1, 1)
        nll = pixel_nll("discretized_logistic", out, GRID.view(256, 1, 1, 1))
        total = torch.exp(-nll.double()).sum().item()
        assert total == pytest.approx(1.0, abs=1e-3), (location, log_scale)


def test_gaussian_nll_is_the_normal_density_above_the_quantisation_floor():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 5, 5)
    out = torch.randn(3, 4, 5, 5)
    mean, raw_log_std = torch.sigmoid(out[:, :2]), out[:, 2:]
    log_std = GAUSSIAN_LOG_STD_MIN + torch.nn.functional.softplus(
        raw_log_std - GAUSSIAN_LOG_STD_MIN
    )
    expected = -Normal(mean, log_std.exp()).log_prob(x)
    torch.testing.assert_close(pixel_nll("gaussian", out, x), expected)
    assert (log_std > GAUSSIAN_LOG_STD_MIN).all()


def test_bernoulli_is_the_binary_cross_entropy():
    x = torch.rand(2, 1, 4, 4)
    logits = torch.randn(2, 1, 4, 4)
    p = torch.sigmoid(logits)
    expected = -(x * p.log() + (1 - x) * (1 - p).log())
    torch.testing.assert_close(pixel_nll("bernoulli", logits, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_floor_is_below_every_decoder_output_and_reached_by_a_perfect_one(name):
    torch.manual_seed(1)
    x = torch.randint(0, 256, (64, 3, 4, 4)).float() / 255
    outputs = torch.randn(64, 3 * OUTPUTS_PER_CHANNEL[name], 4, 4) * 4
    floor = pixel_floor(name, x)
    assert (pixel_nll(name, outputs, x) >= floor - 1e-4).all()
    # A decoder that puts its mean on the pixel with the smallest spread reaches the floor.
    perfect = {
        "bernoulli": torch.logit(x.clamp(1e-6, 1 - 1e-6)),
        "gaussian": torch.cat([torch.logit(x.clamp(1e-6, 1 - 1e-6)), torch.full_like(x, -40)], 1),
        "discretized_logistic": torch.cat([2 * x - 1, torch.full_like(x, -7.0)], 1),
    }[name]
    gap = pixel_nll(name, perfect, x) - floor
    assert gap.abs().max() < 0.05


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_mean_image_is_in_the_unit_interval_and_tracks_the_location(name):
    x = torch.rand(2, 3, 4, 4) * 0.98 + 0.01
    out = {
        "bernoulli": torch.logit(x),
        "gaussian": torch.cat([torch.logit(x), torch.zeros_like(x)], 1),
        "discretized_logistic": torch.cat([2 * x - 1, torch.zeros_like(x)], 1),
    }[name]
    torch.testing.assert_close(pixel_mean(name, out), x, rtol=1e-4, atol=1e-5)
    assert pixel_mean(name, out * 50).min() >= 0 and pixel_mean(name, out * 50).max() <= 1


def test_unknown_likelihood_is_refused():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        pixel_nll("poisson", torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))


def test_bits_per_dim_converts_nats():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
