"""From scores to decisions: conformal thresholds on held-out normal images, stored with models.

The normal validation images are split in two: the *selection* half chooses the epoch (early
stopping), the *calibration* half only calibrates, so the threshold is not set on the images
that picked the model. For a target false-positive rate alpha the threshold is the conformal
quantile of the n calibration scores, the ceil((n + 1)(1 - alpha))-th smallest: a new normal
image exceeds it with probability at most alpha (when it is exchangeable with the calibration
images). Every score also gets a ``normalized_score``, its conformal p-value against the
calibration scores: 0.05 means "as unusual as the most unusual 5% of normal images".

A model's threshold record (JSON) says how to score (a ``ScoreSpec``), where to cut and the
calibration scores. It lives in ``THRESHOLD_FILE`` beside the model file and is the
``THRESHOLD_TAG`` of its registered version, so `convvae score` and serving decide the same way
wherever the model goes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convvae.anomaly.scores import ALL_SCORES, ScoreSpec, score_images
from convvae.errors import DataError
from convvae.model.vae import ConvVAE

THRESHOLD_TAG = "anomaly.threshold"


def selection_and_calibration(normal_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Held-out normal images (in seeded random order) split into the selection half (even
    positions: early stopping) and the calibration half (odd positions: thresholds); fewer
    than 2 is a DataError."""
    if len(normal_images) < 2:
        raise DataError(
            f"{len(normal_images)} held-out normal image(s): at least 2 are needed (half choose "
            "the epoch, half calibrate the threshold); raise data.max_train_images or "
            "data.val_fraction"
        )
    return normal_images[0::2], normal_images[1::2]


def conformal_threshold(calibration_scores: np.ndarray, target_fpr: float) -> float:
    """The ceil((n + 1)(1 - target_fpr))-th smallest of n calibration scores (the largest when
    n is too small for the target: then the guarantee is 1 / (n + 1), see ``achievable_fpr``)."""
    scores = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"need a non-empty 1-D array of calibration scores, got {scores.shape}")
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must be between 0 and 1, got {target_fpr}")
    rank = math.ceil((len(scores) + 1) * (1 - target_fpr))
    return float(scores[min(rank, len(scores)) - 1])


def achievable_fpr(n_calibration: int) -> float:
    """The smallest false-positive rate n calibration images can guarantee: 1 / (n + 1)."""
    return 1 / (n_calibration + 1)


def normalized_scores(scores: np.ndarray, calibration_scores: np.ndarray) -> np.ndarray:
    """Conformal p-values, float64 (N,): (1 + #{calibration scores >= s}) / (n + 1) for each s;
    small = unusual. Uniform on normal images, near 1 / (n + 1) for clear anomalies."""
    calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    at_least = len(calibration) - np.searchsorted(calibration, np.asarray(scores), side="left")
    return (1 + at_least) / (len(calibration) + 1)


@dataclass(frozen=True)
class StoredThreshold:
    """What a stage stored beside a model (threshold.json): how to score, where to cut, and the
    calibration scores that turn a score into a p-value."""

    spec: ScoreSpec
    threshold: float  # flag images whose score is above this
    normal_class: int | None  # None: the model was trained on every class
    calibration_scores: np.ndarray  # float64 (n,), sorted
    record: dict = field(default_factory=dict, compare=False)  # the JSON it was read from

    def decide(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        """Per image: ``score``, ``normalized_score`` (conformal p-value) and ``is_anomaly``."""
        scores = np.asarray(scores, dtype=np.float64)
        return {
            "score": scores,
            "normalized_score": normalized_scores(scores, self.calibration_scores),
            "is_anomaly": scores > self.threshold,
        }


def threshold_record(
    spec: ScoreSpec,
    calibration_scores: np.ndarray,
    target_fpr: float,
    normal_class: int | None,
    **context: object,
) -> dict:
    """The threshold file's contents: the conformal cut of ``calibration_scores`` (normal
    images that neither trained nor selected the model; never test labels) for ``target_fpr``,
    those scores, how to recompute the score, the normal class (None: every class) and
    ``context`` (class name, data source, the cuts of other scores)."""
    calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    return {
        "score": spec.name,
        "threshold": conformal_threshold(calibration, target_fpr),
        "target_fpr": target_fpr,
        "achievable_fpr": achievable_fpr(len(calibration)),
        "iwae_samples": spec.samples,
        "noise_seed": spec.noise_seed,
        "normal_class": normal_class,
        "calibration_scores": calibration.tolist(),
        **context,
    }


def calibrate(
    model: ConvVAE, calibration_images: np.ndarray, spec: ScoreSpec, target_fpr: float, **context
) -> dict:
    """The threshold record of ``model`` from its score of ``calibration_images`` (uint8
    (N, C, H, W) normal images held out from training and from early stopping)."""
    scores = score_images(model, calibration_images, spec)
    context.setdefault("normal_class", None)
    return threshold_record(spec, scores, target_fpr, **context)


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
            spec=ScoreSpec(str(raw["score"]), int(raw["iwae_samples"]), int(raw["noise_seed"])),
            threshold=float(raw["threshold"]),
            normal_class=None if normal_class is None else int(normal_class),
            calibration_scores=np.sort(np.asarray(raw["calibration_scores"], dtype=np.float64)),
            record=dict(raw),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"{where}: not a threshold record ({type(err).__name__}: {err}); {fix}"
        ) from None
    if stored.spec.name not in ALL_SCORES or stored.spec.samples < 1:
        raise DataError(f"{where}: unknown score {stored.spec.name!r} or iwae_samples < 1; {fix}")
    if stored.calibration_scores.ndim != 1 or len(stored.calibration_scores) == 0:
        raise DataError(f"{where}: no calibration scores; {fix}")
    return stored
