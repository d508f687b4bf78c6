"""One-class anomaly detection with a ConvVAE: per-image scores, detection metrics, thresholds.

Convention: a higher score means more anomalous; labels are 1 for anomalous and 0 for normal
images (the anomalous class is the positive class of ROC-AUC, PR-AUC and F1).

Scores, per image (all from one batched pass over the images, deterministic):

- ``recon_bce``: binary cross-entropy of the reconstruction decoded from the posterior mean, nats.
- ``neg_elbo``: negative ELBO, nats, averaged over the same ``k`` posterior samples as the IWAE
  bound (a k-sample estimate of the single-sample -ELBO: lower variance, same expectation).
- ``iwae_nll``: the importance-weighted bound on -log p(x) with ``k`` samples (Burda et al. 2016).
- ``excess_nll``: the IWAE NLL minus the likelihood's floor for this image, sum_i H(x_i) with H
  the binary entropy of pixel i's grey level (nats). A Bernoulli likelihood on grey levels can
  never give an image less than that floor, so the raw NLL mostly measures how many pixels are
  grey (a T-shirt scores worse than a sandal under any model); the excess measures how far the
  model is from the best possible fit of this image. It is the input-complexity correction of
  Serrà et al. (below) with the complexity measured in the likelihood's own units.
- ``complexity``: Serrà et al. (ICLR 2020), S(x) = -log2 p(x) - L(x) in bits, with -log p(x) the
  IWAE bound and L(x) the length in bits of the image's PNG file (Pillow, compress_level 9), so
  simple images (few strokes, much background) are not mistaken for likely ones.

The posterior noise is one fixed (k, latent_dim) draw shared by every image, so an image's score
does not depend on which other images share its batch (common random numbers): scoring one file
alone gives the same value as scoring it inside a test set.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from convvae.errors import DataError
from convvae.model import ConvVAE
from convvae.stats import bootstrap_ci
from convvae.train import to_unit_interval

SCORES = ("recon_bce", "neg_elbo", "iwae_nll", "excess_nll", "complexity")
COMPRESSOR = "png (Pillow, compress_level=9)"
# Images x importance samples decoded at once: bounds memory (about 100 MB at the default model).
_DECODES_PER_CHUNK = 8192


@torch.no_grad()
def model_scores(
    model: ConvVAE, images: torch.Tensor, k: int = 32, seed: int = 0
) -> dict[str, np.ndarray]:
    """``recon_bce``, ``neg_elbo``, ``iwae_nll`` and ``excess_nll`` of every image, each float64
    (N,) in nats.

    images: uint8 (N, C, H, W). ``k`` importance samples per image with noise drawn once from
    ``seed`` and shared by all images. Batches of images are decoded k at a time in one call.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model.eval()
    eps = torch.randn(k, model.arch.latent_dim, generator=torch.Generator().manual_seed(seed))
    log_q_eps = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(1)  # (k,), before the log-det
    batch_size = max(1, _DECODES_PER_CHUNK // (k + 1))
    parts: dict[str, list[torch.Tensor]] = {
        "recon_bce": [],
        "neg_elbo": [],
        "iwae_nll": [],
        "excess_nll": [],
    }
    for start in range(0, len(images), batch_size):
        x = to_unit_interval(images[start : start + batch_size])
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
        log_weights = -bce[:, 1:] + (log_pz - log_qz).double()  # (B, k)
        parts["recon_bce"].append(bce[:, 0])
        parts["neg_elbo"].append(-log_weights.mean(1))
        iwae_nll = -(torch.logsumexp(log_weights, 1) - math.log(k))
        parts["iwae_nll"].append(iwae_nll)
        # BCE(x, x) = sum_i H(x_i): the least -log p(x) any Bernoulli decoder can reach.
        floor = F.binary_cross_entropy(x, x, reduction="none").flatten(1).sum(1).double()
        parts["excess_nll"].append(iwae_nll - floor)
    return {name: torch.cat(values).numpy() for name, values in parts.items()}


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
    scores = model_scores(model, torch.from_numpy(np.ascontiguousarray(images)), k, seed)
    bits = compressed_bits(images) if bits is None else bits
    scores["complexity"] = scores["iwae_nll"] / math.log(2) - bits
    return scores


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr: float = 0.95) -> float:
    """False positive rate at the lowest threshold that flags at least ``tpr`` of the anomalies.

    labels: (N,) 1 anomalous, 0 normal; scores: (N,) higher = more anomalous.
    """
    fprs, tprs, _ = roc_curve(labels, scores)
    return float(fprs[np.searchsorted(tprs, tpr, side="left")])


def threshold_from_normal(normal_scores: np.ndarray, quantile: float = 0.95) -> float:
    """The ``quantile`` of scores of normal (validation) images: an image scoring above it is
    flagged. Uses normal data only, never test labels; about 1 - quantile of normals are flagged.
    """
    normal_scores = np.asarray(normal_scores, dtype=np.float64)
    if normal_scores.ndim != 1 or len(normal_scores) == 0:
        raise ValueError(f"need a non-empty 1-D array of normal scores, got {normal_scores.shape}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be between 0 and 1, got {quantile}")
    return float(np.quantile(normal_scores, quantile))


def f1_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of flagging ``scores > threshold`` as anomalous (label 1)."""
    flagged = np.asarray(scores) > threshold
    labels = np.asarray(labels).astype(bool)
    true_pos = np.count_nonzero(flagged & labels)
    precision = true_pos / max(np.count_nonzero(flagged), 1)
    recall = true_pos / max(np.count_nonzero(labels), 1)
    f1 = 2 * precision * recall / (precision + recall) if true_pos else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def detection_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """ROC-AUC with a bootstrap 95% interval, PR-AUC, FPR at 95% TPR, and F1 at ``threshold``.

    labels: (N,) 1 anomalous, 0 normal. scores: (N,) or (N, S) for S seeds; with several
    columns every metric is the mean over seeds, and the interval resamples test images
    (rows) for that mean. ``threshold``: a scalar, or (S,) one per seed.
    """
    labels = np.asarray(labels)
    columns = np.asarray(scores, dtype=np.float64).reshape(len(labels), -1)
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), columns.shape[1:])

    def mean_over_seeds(metric: Callable[[np.ndarray, np.ndarray], float]):
        return lambda y, s: float(np.mean([metric(y, column) for column in s.T]))

    mean_auc = mean_over_seeds(roc_auc_score)
    low, high = bootstrap_ci(mean_auc, labels, columns, n_resamples, seed)
    per_seed = [f1_at_threshold(labels, c, t) for c, t in zip(columns.T, thresholds, strict=True)]
    aucs = [roc_auc_score(labels, column) for column in columns.T]
    return {
        "roc_auc": mean_auc(labels, columns),
        "roc_auc_ci_low": low,
        "roc_auc_ci_high": high,
        "roc_auc_seed_sd": float(np.std(aucs)),
        "average_precision": mean_over_seeds(average_precision_score)(labels, columns),
        "fpr_at_95_tpr": mean_over_seeds(fpr_at_tpr)(labels, columns),
        "threshold": float(np.mean(thresholds)),
        **{key: float(np.mean([m[key] for m in per_seed])) for key in per_seed[0]},
    }


def roc_points(labels: np.ndarray, scores: np.ndarray) -> list[dict[str, float]]:
    """The ROC curve as rows ``{"fpr": .., "tpr": ..}`` (for DVC plots), corners included."""
    fprs, tprs, _ = roc_curve(labels, scores)
    return [{"fpr": float(f), "tpr": float(t)} for f, t in zip(fprs, tprs, strict=True)]


# A model's threshold record (JSON) lives in convvae.files.THRESHOLD_FILE beside the model file;
# the same record is the THRESHOLD_TAG of its registered version.
THRESHOLD_TAG = "anomaly.threshold"


@dataclass(frozen=True)
class StoredThreshold:
    """What a stage stored beside a model (threshold.json): how to score, and where to cut."""

    score: str  # one of SCORES
    threshold: float  # flag images whose score is above this
    iwae_samples: int
    noise_seed: int
    normal_class: int | None  # None: the model was trained on every class


def threshold_record(
    score: str,
    threshold: float,
    quantile: float,
    iwae_samples: int,
    normal_class: int | None,
    **context: str,
) -> dict:
    """The threshold file's contents: the cut (``threshold_from_normal`` of normal validation
    scores, never test labels), how to recompute ``score``, the normal class (None: every class)
    and ``context`` (class name, data source)."""
    return {
        "score": score,
        "threshold": threshold,
        "quantile": quantile,
        "iwae_samples": iwae_samples,
        "noise_seed": 0,
        "normal_class": normal_class,
        **context,
    }


def read_threshold(path: str | Path) -> StoredThreshold:
    """Read a threshold JSON written beside a model; missing or malformed is a DataError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(
            f"{path}: no threshold file beside the model; pass models/model.pt (after `dvc repro "
            "evaluate`), models/anomaly/class_<c>/model.pt or a registered models:/ URI"
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the threshold file ({err.strerror})") from None
    return parse_threshold(text, str(path))


def parse_threshold(text: str, where: str) -> StoredThreshold:
    """A threshold record from its JSON text; ``where`` (a file or models:/ URI) names it in
    the DataError a malformed record raises."""
    fix = "re-run the stage that wrote it (dvc repro -f evaluate / benchmark), which re-registers"
    try:
        raw = json.loads(text)
        normal_class = raw.get("normal_class")
        stored = StoredThreshold(
            score=str(raw["score"]),
            threshold=float(raw["threshold"]),
            iwae_samples=int(raw["iwae_samples"]),
            noise_seed=int(raw["noise_seed"]),
            normal_class=None if normal_class is None else int(normal_class),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"{where}: not a threshold record ({type(err).__name__}: {err}); {fix}"
        ) from None
    if stored.score not in SCORES or stored.iwae_samples < 1:
        raise DataError(f"{where}: unknown score {stored.score!r} or iwae_samples < 1; {fix}")
    return stored
