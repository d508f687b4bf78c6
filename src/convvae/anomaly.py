"""The one scoring path: per-image likelihood and anomaly scores of a ConvVAE.

Every consumer (the evaluate stage's likelihoods, the one-class benchmark, `convvae score`,
promotion and the served pyfunc) calls ``model_scores`` or ``score_images``; there is no second
estimator. A higher score means more anomalous.

Scores, per image (all from one batched pass over the images, deterministic):

- ``recon_bce``: binary cross-entropy of the reconstruction decoded from the posterior mean, nats.
- ``neg_elbo``: negative ELBO, nats, averaged over the same ``k`` posterior samples as the IWAE
  bound (a k-sample estimate of the single-sample -ELBO: lower variance, same expectation); it is
  ``recon_nll + kl``, both estimated from those samples.
- ``iwae_nll``: the importance-weighted bound on -log p(x) with ``k`` samples (Burda et al. 2016).
- ``excess_nll``: the IWAE NLL minus the likelihood's floor for this image, sum_i H(x_i) with H
  the binary entropy of pixel i's grey level (nats): the Bernoulli deviance of the image. A
  Bernoulli likelihood on grey levels can never give an image less than that floor, so the raw
  NLL mostly measures how many pixels are grey (a T-shirt scores worse than a sandal under any
  model); the excess measures how far the model is from the best possible fit of this image.
- ``complexity``: Serrà et al. (ICLR 2020), S(x) = -log2 p(x) - L(x) in bits, with -log p(x) the
  IWAE bound and L(x) the length in bits of the image's PNG file (Pillow, compress_level 9).

The posterior noise is one fixed (k, latent_dim) draw shared by every image, so an image's score
does not depend on which other images share its batch (common random numbers): scoring one file
alone gives the same value as scoring it inside a test set.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from convvae.config import AnomalyConfig
from convvae.images import to_unit_interval
from convvae.model import ConvVAE

SCORES = ("recon_bce", "neg_elbo", "iwae_nll", "excess_nll", "complexity")
COMPRESSOR = "png (Pillow, compress_level=9)"
# Images x importance samples decoded at once: bounds memory (about 100 MB at the default model).
_DECODES_PER_CHUNK = 8192


@dataclass(frozen=True)
class ScoreSpec:
    """How to compute an anomaly score: stored with every model beside its threshold."""

    name: str = "excess_nll"  # one of SCORES
    samples: int = 32  # importance samples per image
    noise_seed: int = 0  # seed of the shared posterior noise

    @classmethod
    def from_config(cls, cfg: AnomalyConfig) -> ScoreSpec:
        """The spec of params.yaml's ``anomaly`` section."""
        return cls(cfg.score, cfg.samples, cfg.noise_seed)


@torch.no_grad()
def model_scores(
    model: ConvVAE, images: torch.Tensor, k: int = 32, seed: int = 0
) -> dict[str, np.ndarray]:
    """Likelihood terms and model-based scores of every image, each float64 (N,) in nats.

    images: uint8 (N, C, H, W), or float in [0, 1]. Keys: ``recon_bce``, ``recon_nll`` and
    ``kl`` (k-sample estimates of the ELBO's terms), ``neg_elbo`` (= recon_nll + kl), ``iwae_nll``,
    ``excess_nll``. ``k`` importance samples per image with noise drawn once from ``seed`` and
    shared by all images; batches of images are decoded k + 1 codes at a time in one call.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model.eval()
    eps = torch.randn(k, model.arch.latent_dim, generator=torch.Generator().manual_seed(seed))
    log_q_eps = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(1)  # (k,), before the log-det
    batch_size = max(1, _DECODES_PER_CHUNK // (k + 1))
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        x = to_unit_interval(images[start : start + batch_size])
        for name, values in _batch_scores(model, x, eps, log_q_eps).items():
            parts.setdefault(name, []).append(values)
    return {name: torch.cat(values).numpy() for name, values in parts.items()}


def _batch_scores(
    model: ConvVAE, x: torch.Tensor, eps: torch.Tensor, log_q_eps: torch.Tensor
) -> dict[str, torch.Tensor]:
    k = len(eps)
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mu[:, None, :] + std[:, None, :] * eps[None]  # (B, k, D)
    # The posterior mean and the k samples go through the decoder together.
    codes = torch.cat([mu[:, None, :], z], dim=1).flatten(0, 1)  # (B * (k + 1), D)
    logits = model.decode(codes).unflatten(0, (len(x), k + 1))  # (B, k + 1, C, H, W)
    targets = x[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    bce = bce.flatten(2).sum(2).double()  # (B, k + 1) nats
    log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(2)
    log_qz = log_q_eps[None] - 0.5 * logvar.sum(1, keepdim=True)
    log_ratio = (log_qz - log_pz).double()  # (B, k): the KL term's k-sample estimate
    log_weights = -bce[:, 1:] - log_ratio  # (B, k)
    recon_nll, kl = bce[:, 1:].mean(1), log_ratio.mean(1)
    iwae_nll = -(torch.logsumexp(log_weights, 1) - math.log(k))
    # BCE(x, x) = sum_i H(x_i): the least -log p(x) any Bernoulli decoder can reach.
    floor = F.binary_cross_entropy(x, x, reduction="none").flatten(1).sum(1).double()
    return {
        "recon_bce": bce[:, 0],
        "recon_nll": recon_nll,
        "kl": kl,
        "neg_elbo": recon_nll + kl,
        "iwae_nll": iwae_nll,
        "excess_nll": iwae_nll - floor,
    }


def compressed_bits(images: np.ndarray) -> np.ndarray:
    """Length in bits of each image's lossless PNG code: float64 (N,) for uint8 (N, C, H, W)."""
    lengths = np.empty(len(images), dtype=np.float64)
    for i, image in enumerate(images):  # the compressor has no batched form
        pixels = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=9)
        lengths[i] = 8 * buffer.tell()
    return lengths


def all_scores(
    model: ConvVAE, images: np.ndarray, k: int = 32, seed: int = 0, bits: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Every score of ``SCORES`` for uint8 images (N, C, H, W): float64 (N,) each.

    ``bits`` are the images' ``compressed_bits`` when already known (they depend on the images
    only, so a caller scoring one data set with many models computes them once).
    """
    terms = model_scores(model, torch.from_numpy(np.ascontiguousarray(images)), k, seed)
    bits = compressed_bits(images) if bits is None else bits
    terms["complexity"] = terms["iwae_nll"] / math.log(2) - bits
    return {name: terms[name] for name in SCORES}


def score_images(model: ConvVAE, images: np.ndarray, spec: ScoreSpec) -> np.ndarray:
    """The anomaly score ``spec`` names, float64 (N,), for images (N, C, H, W): uint8, or
    float in [0, 1]. The one function behind `convvae score`, serving and the benchmark."""
    if spec.name == "complexity":
        return all_scores(model, images, spec.samples, spec.noise_seed)["complexity"]
    images_t = torch.from_numpy(np.ascontiguousarray(images))
    return model_scores(model, images_t, spec.samples, spec.noise_seed)[spec.name]
