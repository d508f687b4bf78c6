"""The decoder's pixel likelihoods p(x | z): Bernoulli, Gaussian and discretized logistic.

The decoder outputs ``OUTPUTS_PER_CHANNEL[name]`` maps per image channel; the functions here turn
that output into per-pixel negative log-likelihoods (nats), mean images in [0, 1] and the least
NLL any decoder of the family can give a pixel (the "floor" that ``excess_nll`` subtracts).

- ``bernoulli``: one logit per pixel; the grey level is the target of a binary cross-entropy.
  Not a probability of the 8-bit image (Loaiza-Ganem & Cunningham 2019): its optimum is the
  binary entropy of the grey level, not 0, which is why the anomaly scores subtract the floor.
- ``gaussian``: a mean (sigmoid, in [0, 1]) and a log standard deviation per pixel, or one per
  channel shared by all pixels (``variance: shared``). A density on [0, 1], not a probability;
  the standard deviation is kept above the quantisation noise of 8-bit pixels (1/255/sqrt(12)),
  below which a density on discrete data rewards collapsing onto the grid.
- ``discretized_logistic``: a logistic per pixel integrated over the pixel's 1/255 bin, the edge
  bins taking the tails (PixelCNN++, Salimans et al. 2017; one mixture component). A true
  probability of the 8-bit image, so its NLL converts to bits per dimension.
"""

from __future__ import annotations

import math
import typing

import torch
import torch.nn.functional as F

from convvae.config import Likelihood

LIKELIHOODS: tuple[str, ...] = typing.get_args(Likelihood)
OUTPUTS_PER_CHANNEL = {"bernoulli": 1, "gaussian": 2, "discretized_logistic": 2}
# Smallest Gaussian standard deviation: the uniform quantisation noise of 8-bit pixels.
GAUSSIAN_LOG_STD_MIN = math.log(1 / 255 / math.sqrt(12))
# Smallest logistic log-scale (PixelCNN++'s bound): the bin then holds nearly all the mass.
LOGISTIC_LOG_SCALE_MIN = -7.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_HALF_BIN = 1 / 255  # half a pixel bin on the [-1, 1] scale the logistic works in


def _split(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # (..., 2C, H, W) → location and scale maps, each (..., C, H, W).
    channels = out.shape[-3] // 2
    return out[..., :channels, :, :], out[..., channels:, :, :]


def gaussian_log_std(raw: torch.Tensor) -> torch.Tensor:
    """A smooth floor at GAUSSIAN_LOG_STD_MIN: gradients never vanish, as with a hard clamp."""
    return GAUSSIAN_LOG_STD_MIN + F.softplus(raw - GAUSSIAN_LOG_STD_MIN)


def pixel_nll(name: str, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x_i | z) per pixel, nats, shaped like ``x`` (..., C, H, W) with x in [0, 1];
    ``out`` is the decoder's output (..., P*C, H, W) for the same leading dimensions."""
    out = out.float()
    if name == "bernoulli":
        return F.binary_cross_entropy_with_logits(out, x, reduction="none")
    if name == "gaussian":
        raw_mean, raw_log_std = _split(out)
        log_std = gaussian_log_std(raw_log_std)
        z = (x - torch.sigmoid(raw_mean)) * torch.exp(-log_std)
        return _HALF_LOG_2PI + log_std + 0.5 * z.pow(2)
    if name == "discretized_logistic":
        return -_discretized_logistic_log_prob(*_split(out), x)
    raise ValueError(f"unknown likelihood {name!r}; one of {', '.join(LIKELIHOODS)}")


def _discretized_logistic_log_prob(
    location: torch.Tensor, raw_log_scale: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    # PixelCNN++'s discretized_logistic_mix_logistic_loss with one component, on [-1, 1].
    y = 2 * x - 1
    log_scale = raw_log_scale.clamp(min=LOGISTIC_LOG_SCALE_MIN)
    inv_scale = torch.exp(-log_scale)
    centered = y - location
    plus_in = inv_scale * (centered + _HALF_BIN)
    min_in = inv_scale * (centered - _HALF_BIN)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in): the 0 bin's mass
    log_one_minus_cdf_min = -F.softplus(min_in)  # the 255 bin's mass
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_scale * centered
    # Where the bin's mass underflows, the density at its centre times the bin width.
    log_pdf_mid = mid_in - log_scale - 2 * F.softplus(mid_in) - math.log(127.5)
    log_mass = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp_min(1e-12)), log_pdf_mid)
    return torch.where(
        y < -0.999, log_cdf_plus, torch.where(y > 0.999, log_one_minus_cdf_min, log_mass)
    )


def pixel_mean(name: str, out: torch.Tensor) -> torch.Tensor:
    """The decoder's mean image in [0, 1], (..., C, H, W) (the logistic's location, clipped)."""
    if name == "bernoulli":
        return torch.sigmoid(out)
    if name == "gaussian":
        return torch.sigmoid(_split(out)[0])
    if name == "discretized_logistic":
        return ((_split(out)[0] + 1) / 2).clamp(0, 1)
    raise ValueError(f"unknown likelihood {name!r}; one of {', '.join(LIKELIHOODS)}")


def pixel_floor(name: str, x: torch.Tensor) -> torch.Tensor:
    """The least -log p(x_i | z) any decoder of the family can reach, per pixel, like ``x``:
    the binary entropy of the grey level (Bernoulli), the density at the smallest standard
    deviation (Gaussian), 0 (discretized logistic: a probability is at most 1)."""
    if name == "bernoulli":
        return F.binary_cross_entropy(x, x, reduction="none")
    if name == "gaussian":
        return torch.full_like(x, _HALF_LOG_2PI + GAUSSIAN_LOG_STD_MIN)
    if name == "discretized_logistic":
        return torch.zeros_like(x)
    raise ValueError(f"unknown likelihood {name!r}; one of {', '.join(LIKELIHOODS)}")


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Nats per image → bits per pixel value: meaningful for a discrete likelihood only."""
    return nll_nats / (dims * math.log(2))
