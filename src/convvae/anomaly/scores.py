"""The one scoring path: per-image likelihood and anomaly scores of a ConvVAE.

Every consumer (the evaluate stage's likelihoods, the one-class benchmark, `convvae score`,
promotion and the served pyfunc) calls ``model_scores`` or ``score_images``; there is no second
estimator. A higher score means more anomalous.

Scores, per image (all from one batched pass over the images, deterministic):

- ``recon_mse``: squared error of the reconstruction decoded from the posterior mean, summed
  over pixels in [0, 1]: the plain reconstruction-error baseline, free of the Bernoulli floor.
- ``recon_bce``: negative log-likelihood of the image under the reconstruction decoded from the
  posterior mean, nats (a binary cross-entropy for the Bernoulli likelihood, hence the name).
- ``neg_elbo``: negative ELBO, nats, averaged over the same ``k`` posterior samples as the IWAE
  bound (a k-sample estimate of the single-sample -ELBO: lower variance, same expectation); it is
  ``recon_nll + kl``, both estimated from those samples.
- ``iwae_nll``: the importance-weighted bound on -log p(x) with ``k`` samples (Burda et al. 2016).
- ``excess_nll``: the deviance of the image: the IWAE NLL minus the least -log p(x) any decoder
  of the likelihood's family can give it (``convvae.model.likelihood.pixel_floor``; for Bernoulli
  sum_i H(x_i), H the binary entropy of pixel i's grey level). A Bernoulli likelihood on grey
  levels is not a probability of the 8-bit image, and its raw NLL mostly measures how many
  pixels are grey (a T-shirt scores worse than a sandal under any model); the deviance measures
  how far the model is from the best possible fit.
- ``hidden_knn``: distance, in the encoder's last hidden layer, to the 5th nearest normal
  training image (a nearest-neighbour density of the training images in the VAE's features).
- ``cosine_knn``: distance between L2-normalised pixel vectors to the 5th nearest training image
  (so a blank or saturated frame, far from every normal image's direction, is caught).
- ``fused`` (the default): the mean of ``excess_nll``, ``hidden_knn`` and ``cosine_knn``, each
  standardised by its mean and standard deviation on held-out normal images (the selection half
  of the validation images). It keeps the likelihood and adds two densities that catch what the
  likelihood misses; chosen on held-out *training* images, never on test images (README).

The distance scores need the model's ``Reference`` (``fit_reference``, stored in the model file).

``convvae.anomaly.maps`` says where in an image: per-pixel maps, fitted with the same Reference.

The posterior noise is one fixed (k, latent_dim) draw shared by every image, so an image's score
does not depend on which other images share its batch (common random numbers): scoring one file
alone gives the same value as scoring it inside a test set.
"""

from __future__ import annotations

import math
import typing
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from convvae.anomaly.maps import smoothed_maps
from convvae.config import AnomalyConfig, AnomalyScore
from convvae.data.images import as_uint8_images, to_unit_interval
from convvae.errors import CheckpointError
from convvae.model.likelihood import pixel_floor, pixel_mean
from convvae.model.vae import ConvVAE, Reference
from convvae.runtime.progress import live_bar

# Every score's name: the values `anomaly.score` accepts.
ALL_SCORES: tuple[str, ...] = typing.get_args(AnomalyScore)
# Image scores read off the anomaly maps: the folder sources' default. Not in the class
# benchmark's table (a nearest-neighbour search over every patch of 10,000 test images costs
# minutes per class); the benchmark computes one only when it is the primary score.
MAP_SCORES = ("patch_knn",)
# The scores the class benchmark reports for every model, in report order.
SCORES: tuple[str, ...] = tuple(name for name in ALL_SCORES if name not in MAP_SCORES)
# The scores the model alone gives; the others also need its Reference.
LIKELIHOOD_SCORES = ("recon_mse", "recon_bce", "neg_elbo", "iwae_nll", "excess_nll")
FUSED_COMPONENTS = ("excess_nll", "hidden_knn", "cosine_knn")
KNN_NEIGHBOURS = 5
# Images x importance samples decoded at once: bounds memory (about 200 MB at the default model,
# half of it the last decoder layer's patches before col2im).
_DECODES_PER_CHUNK = 8192


@dataclass(frozen=True)
class ScoreSpec:
    """How to compute an anomaly score: stored with every model beside its threshold."""

    name: str = "fused"  # one of SCORES
    samples: int = AnomalyConfig.samples  # importance samples per image
    noise_seed: int = 0  # seed of the shared posterior noise

    @classmethod
    def from_config(cls, cfg: AnomalyConfig) -> ScoreSpec:
        """The spec of params.yaml's ``anomaly`` section."""
        return cls(cfg.score, cfg.samples, cfg.noise_seed)


@torch.no_grad()
def model_scores(
    model: ConvVAE,
    images: torch.Tensor,
    k: int = AnomalyConfig.samples,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Likelihood terms and model-based scores of every image, each float64 (N,) in nats.

    images: uint8 (N, C, H, W), or float in [0, 1]. Keys: ``recon_mse``, ``recon_bce``,
    ``recon_nll`` and
    ``kl`` (k-sample estimates of the ELBO's terms), ``neg_elbo`` (= recon_nll + kl), ``iwae_nll``,
    ``excess_nll``. ``k`` importance samples per image with noise drawn once from ``seed`` and
    shared by all images; batches of images are decoded k + 1 codes at a time in one call.
    ``progress``: a bar over the images on a terminal (none in logs).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model.eval()
    eps = torch.randn(k, model.arch.latent_dim, generator=torch.Generator().manual_seed(seed))
    log_q_eps = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(1)  # (k,), before the log-det
    batch_size = max(1, _DECODES_PER_CHUNK // (k + 1))
    parts: dict[str, list[torch.Tensor]] = {}
    with live_bar(len(images), "scoring", enabled=progress) as bar:
        for start in range(0, len(images), batch_size):
            x = to_unit_interval(images[start : start + batch_size])
            for name, values in _batch_scores(model, x, eps, log_q_eps).items():
                parts.setdefault(name, []).append(values)
            bar.update(len(x))
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
    out = model.decode(codes).unflatten(0, (len(x), k + 1))  # (B, k + 1, P*C, H, W)
    targets = x[:, None].expand(-1, k + 1, -1, -1, -1)
    bce = model.pixel_nll(out, targets).flatten(2).sum(2).double()  # (B, k + 1) nats
    log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(2)
    log_qz = log_q_eps[None] - 0.5 * logvar.sum(1, keepdim=True)
    log_ratio = (log_qz - log_pz).double()  # (B, k): the KL term's k-sample estimate
    log_weights = -bce[:, 1:] - log_ratio  # (B, k)
    recon_nll, kl = bce[:, 1:].mean(1), log_ratio.mean(1)
    iwae_nll = -(torch.logsumexp(log_weights, 1) - math.log(k))
    # The least -log p(x) any decoder of the family can reach (Bernoulli: sum_i H(x_i)).
    floor = pixel_floor(model.arch.likelihood, x).flatten(1).sum(1).double()
    mean = pixel_mean(model.arch.likelihood, out[:, 0])
    recon_mse = (mean - x).pow(2).flatten(1).sum(1).double()
    return {
        "recon_mse": recon_mse,
        "recon_bce": bce[:, 0],
        "recon_nll": recon_nll,
        "kl": kl,
        "neg_elbo": recon_nll + kl,
        "iwae_nll": iwae_nll,
        "excess_nll": iwae_nll - floor,
    }


@torch.no_grad()
def hidden_features(model: ConvVAE, images: np.ndarray) -> torch.Tensor:
    """The encoder's last hidden layer (before the posterior's mean and variance), float32
    (N, H), for uint8 images (N, C, H, W)."""
    model.eval()
    return torch.cat(
        [
            model.encoder(to_unit_interval(torch.from_numpy(images[i : i + 1024])))
            for i in range(0, len(images), 1024)
        ]
    )


def unit_pixels(images: np.ndarray) -> torch.Tensor:
    """Pixel vectors scaled to [0, 1] and to unit length, float32 (N, C*H*W); a blank image
    stays the zero vector (distance 1 from every unit vector)."""
    pixels = torch.from_numpy(images.reshape(len(images), -1)).float() / 255
    return pixels / pixels.norm(dim=1, keepdim=True).clamp_min(1e-8)


def knn_distance(queries: torch.Tensor, bank: torch.Tensor, k: int = KNN_NEIGHBOURS) -> np.ndarray:
    """Euclidean distance of each query (M, D) to its k-th nearest row of ``bank`` (N, D),
    float64 (M,); computed 2048 queries at a time to bound memory, in float64 so that the
    matrix-product form of the distance loses nothing to cancellation (a query's distance must
    not depend on the batch it arrives in)."""
    k = min(k, len(bank))
    bank = bank.double()
    parts = [
        torch.cdist(queries[i : i + 2048].double(), bank).kthvalue(k, dim=1).values
        for i in range(0, len(queries), 2048)
    ]
    return torch.cat(parts).numpy()


def distance_scores(model: ConvVAE, images: np.ndarray) -> dict[str, np.ndarray]:
    """``hidden_knn`` and ``cosine_knn`` of uint8 images (N, C, H, W) against the model's
    Reference images; float64 (N,) each."""
    reference = require_reference(model, "the distance scores")
    hidden_bank, unit_bank = _reference_banks(model, reference)
    with torch.no_grad():
        hidden = knn_distance(hidden_features(model, images), hidden_bank)
        cosine = knn_distance(unit_pixels(images), unit_bank)
    return {"hidden_knn": hidden, "cosine_knn": cosine}


# The reference images' encoder features and unit pixel vectors, computed once per Reference
# (a served model scores many requests against the same bank).
_BANKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _reference_banks(model: ConvVAE, reference: Reference) -> tuple[torch.Tensor, torch.Tensor]:
    if reference not in _BANKS:
        _BANKS[reference] = (
            hidden_features(model, reference.images),
            unit_pixels(reference.images),
        )
    return _BANKS[reference]


def require_reference(model: ConvVAE, needed_by: str, likelihood_will_do: bool = True) -> Reference:
    """The model's Reference; a one-line CheckpointError naming the fix when the file has none
    (``needed_by``: what needs it; ``likelihood_will_do``: a likelihood score is an alternative)."""
    if model.reference is None:
        alternative = f", or use a likelihood score ({', '.join(LIKELIHOOD_SCORES)})"
        raise CheckpointError(
            f"this model file has no reference images, which {needed_by} needs; re-run the "
            "stage that wrote it (dvc repro -f train / benchmark)"
            + (alternative if likelihood_will_do else "")
        )
    return model.reference


def fused_score(components: dict[str, np.ndarray], reference: Reference) -> np.ndarray:
    """The mean of the FUSED_COMPONENTS, each standardised with the reference's statistics."""
    standardised = [
        (components[name] - reference.center[name]) / reference.scale[name]
        for name in FUSED_COMPONENTS
    ]
    return np.mean(standardised, axis=0)


def all_scores(
    model: ConvVAE,
    images: np.ndarray,
    k: int = AnomalyConfig.samples,
    seed: int = 0,
    with_maps: bool = False,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Every score of ``SCORES`` (and of ``MAP_SCORES`` ``with_maps``) for uint8 images
    (N, C, H, W): float64 (N,) each; without a Reference on the model, the likelihood scores
    only. ``progress``: a bar on a terminal while the likelihoods are estimated."""
    images = np.ascontiguousarray(images)
    terms = model_scores(model, torch.from_numpy(images), k, seed, progress)
    scores = {name: terms[name] for name in LIKELIHOOD_SCORES}
    if model.reference is not None:
        scores.update(distance_scores(model, images))
        scores["fused"] = fused_score(scores, model.reference)
        if with_maps:
            scores["patch_knn"] = patch_knn_score(model, images)
    return scores


def patch_knn_score(model: ConvVAE, images: np.ndarray) -> np.ndarray:
    """``patch_knn``: the largest value of an image's smoothed ``feature_knn`` map (its most
    unusual patch, as PatchCore scores an image), float64 (N,)."""
    require_reference(model, "the patch_knn score")
    return map_maxima(smoothed_maps(model, images, "feature_knn"))


def map_maxima(maps: np.ndarray) -> np.ndarray:
    """Each map's largest value, float64 (N,): ``patch_knn`` from maps already computed."""
    return maps.reshape(len(maps), -1).max(axis=1).astype(np.float64)


def fit_reference(
    model: ConvVAE, train_images: np.ndarray, held_out_normal: np.ndarray, k: int, seed: int
) -> Reference:
    """The model's Reference: its normal training images (uint8 (N, C, H, W)), and each fused
    component's mean and standard deviation on ``held_out_normal`` images, which must be
    neither training nor calibration images. Also sets ``model.reference``."""
    unscaled = Reference(np.ascontiguousarray(train_images), {}, {})
    model.reference = unscaled
    held_out = np.ascontiguousarray(held_out_normal)
    raw = {
        "excess_nll": model_scores(model, torch.from_numpy(held_out), k, seed)["excess_nll"],
        **distance_scores(model, held_out),
    }
    model.reference = Reference(
        unscaled.images,
        {name: float(raw[name].mean()) for name in FUSED_COMPONENTS},
        {name: float(raw[name].std() + 1e-12) for name in FUSED_COMPONENTS},
    )
    _BANKS[model.reference] = _BANKS[unscaled]  # same images, same model: not encoded again
    return model.reference


def score_images(model: ConvVAE, images: np.ndarray, spec: ScoreSpec) -> np.ndarray:
    """The anomaly score ``spec`` names, float64 (N,), for images (N, C, H, W): uint8, or
    float in [0, 1]. The one function behind `convvae score`, serving and the benchmark."""
    images = as_uint8_images(images)
    if spec.name in LIKELIHOOD_SCORES:
        return model_scores(model, torch.from_numpy(images), spec.samples, spec.noise_seed)[
            spec.name
        ]
    if spec.name in MAP_SCORES:
        return patch_knn_score(model, images)
    require_reference(model, f"the {spec.name} score")
    return all_scores(model, images, spec.samples, spec.noise_seed)[spec.name]
