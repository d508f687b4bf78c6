"""The names of the anomaly scores and maps, and how a score is computed (``ScoreSpec``).

Higher always means more anomalous. ``convvae.anomaly.scorer`` computes every one of them.

- ``recon_mse``: squared error of the reconstruction decoded from the posterior mean, summed
  over pixels in [0, 1]: the plain reconstruction-error baseline.
- ``recon_nll_at_mean``: negative log-likelihood of the image under its reconstruction from the
  posterior mean, nats, under the model's likelihood (``recon_bce`` before it was renamed).
- ``neg_elbo``: negative ELBO, nats, averaged over the same ``samples`` posterior samples as the
  IWAE bound (``recon_nll + kl``, both estimated from those samples).
- ``iwae_nll``: the importance-weighted bound on -log p(x) (Burda et al. 2016).
- ``excess_nll``: the deviance of the image: ``iwae_nll`` minus the least -log p(x) any decoder
  of the likelihood's family can give it (``convvae.model.likelihood.pixel_floor``). A
  Bernoulli likelihood on grey levels is not a probability of the 8-bit image, and its raw NLL
  mostly measures how many pixels are grey; the deviance measures how far the model is from the
  best possible fit, whatever the likelihood.
- ``hidden_knn``: distance, in the encoder's last hidden layer, to the 5th nearest normal
  training image.
- ``cosine_knn``: distance between unit-length pixel vectors to the 5th nearest training image
  (a blank or saturated frame is far from every normal image's direction). Needs no VAE.
- ``contrast_knn``: distance, in the plane of two image statistics (the log of the pixels'
  standard deviation and of the mean difference between neighbouring pixels, each scaled by
  its spread over the training images), to the 5th nearest training image: flat and nearly
  flat frames at any brightness (a covered or failed camera) sit far below every normal
  image's contrast. Needs no VAE (docs/benchmark/degenerate-selection: why it is fused).
- ``fused``: the mean of ``excess_nll``, ``hidden_knn``, ``cosine_knn`` and ``contrast_knn``,
  each standardised by its mean and standard deviation on held-out normal images (the
  reference's statistics; a reference fitted before ``contrast_knn`` existed fuses the three
  others).
- ``patch_knn``: the largest value of the smoothed ``feature_knn`` map (an image is as unusual
  as its most unusual patch, as PatchCore scores it).
- ``patch_knn_guarded``: ``patch_knn`` standardised on held-out normal images, plus how far the
  standardised ``contrast_knn`` lies beyond ``CONTRAST_GUARD`` standard deviations: nothing for
  nearly every normal image, a lot for a flat or nearly flat frame, which a texture's patches
  can resemble (docs/benchmark/folder-selection: how it was chosen).
- ``patch_and_fused``: the mean of ``patch_knn_guarded`` and ``fused``, each in standard
  deviations of held-out normal images: the most unusual patch and the whole image's evidence
  together, so a plain patch where the object should be, or a cell that is darker throughout,
  counts as well as a local defect (docs/benchmark/folder-selection). A folder's default.

Maps (``MAP_KINDS``), float32 per pixel: ``deviance`` (each pixel's share of the deviance of its
reconstruction from the posterior mean, needs only the model) and ``feature_knn`` (each patch of
the encoder's first convolution: its distance to the nearest patch of the reference images).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from convvae.config import RENAMED_SCORES, AnomalyConfig, AnomalyScore

# Every score's name: the values `anomaly.score` accepts.
ALL_SCORES: tuple[str, ...] = typing.get_args(AnomalyScore)
# Image scores read off the maps. Not in the class benchmark's table (a search over every patch
# of 10,000 test images costs minutes per class); the benchmark runs one only as its primary.
MAP_SCORES = ("patch_knn", "patch_knn_guarded", "patch_and_fused")
# The scores the class benchmark reports for every model, in report order.
SCORES: tuple[str, ...] = tuple(name for name in ALL_SCORES if name not in MAP_SCORES)
# The scores the model alone gives; the others also need its reference.
LIKELIHOOD_SCORES = ("recon_mse", "recon_nll_at_mean", "neg_elbo", "iwae_nll", "excess_nll")
# The ELBO's two terms (k-sample estimates), computed with the likelihood scores.
ELBO_TERMS = ("recon_nll", "kl")
DISTANCE_SCORES = ("hidden_knn", "cosine_knn", "contrast_knn")
FUSED_COMPONENTS = ("excess_nll", "hidden_knn", "cosine_knn", "contrast_knn")
MAP_KINDS = ("deviance", "feature_knn")
# Standardised statistics the reference keeps: the fused parts and the guarded patch score's;
# then, from those, the two halves of patch_and_fused.
STANDARDISED = (*FUSED_COMPONENTS, "patch_knn")
STANDARDISED_AFTER = ("fused", "patch_knn_guarded")
# patch_knn_guarded: contrast distances up to this many standard deviations add nothing.
CONTRAST_GUARD = 4.0


@dataclass(frozen=True)
class ScoreSpec:
    """How to compute an anomaly score: stored with every model in its threshold record."""

    name: str  # one of ALL_SCORES
    samples: int = AnomalyConfig.samples  # importance samples per image
    noise_seed: int = AnomalyConfig.noise_seed  # seed of the posterior noise every image shares

    @classmethod
    def from_config(cls, cfg: AnomalyConfig) -> ScoreSpec:
        """The spec of params.yaml's (resolved) ``anomaly`` section."""
        return cls(cfg.score, cfg.samples, cfg.noise_seed)


def current_name(name: str) -> str:
    """A score's name today, for a name an older record may hold (``recon_bce``)."""
    return RENAMED_SCORES.get(name, name)
