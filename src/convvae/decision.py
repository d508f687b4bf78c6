"""From scores to decisions: thresholds set on normal images, stored with every model.

A model's threshold record (JSON) says how to score (a ``ScoreSpec``) and where to cut. It lives
in ``THRESHOLD_FILE`` beside the model file, and is the ``THRESHOLD_TAG`` of its registered
version, so `convvae score` and serving decide the same way wherever the model goes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convvae.anomaly import SCORES, ScoreSpec, score_images
from convvae.errors import DataError
from convvae.model import ConvVAE

THRESHOLD_TAG = "anomaly.threshold"


@dataclass(frozen=True)
class StoredThreshold:
    """What a stage stored beside a model (threshold.json): how to score, and where to cut."""

    spec: ScoreSpec
    threshold: float  # flag images whose score is above this
    normal_class: int | None  # None: the model was trained on every class


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


def threshold_record(
    spec: ScoreSpec,
    threshold: float,
    quantile: float,
    normal_class: int | None,
    **context: object,
) -> dict:
    """The threshold file's contents: the cut (``threshold_from_normal`` of normal validation
    scores, never test labels), how to recompute the score, the normal class (None: every class)
    and ``context`` (class name, data source, the cuts of other scores)."""
    return {
        "score": spec.name,
        "threshold": threshold,
        "quantile": quantile,
        "iwae_samples": spec.samples,
        "noise_seed": spec.noise_seed,
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
            spec=ScoreSpec(str(raw["score"]), int(raw["iwae_samples"]), int(raw["noise_seed"])),
            threshold=float(raw["threshold"]),
            normal_class=None if normal_class is None else int(normal_class),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"{where}: not a threshold record ({type(err).__name__}: {err}); {fix}"
        ) from None
    if stored.spec.name not in SCORES or stored.spec.samples < 1:
        raise DataError(f"{where}: unknown score {stored.spec.name!r} or iwae_samples < 1; {fix}")
    return stored


def calibrate(
    model: ConvVAE, normal_images: np.ndarray, spec: ScoreSpec, quantile: float, **context: object
) -> dict:
    """The threshold record of ``model``: ``spec``'s score of held-out normal images (uint8
    (N, C, H, W)), cut at ``quantile``. ``context`` goes into the record (normal_class, ...)."""
    scores = score_images(model, normal_images, spec)
    context.setdefault("normal_class", None)
    return threshold_record(spec, threshold_from_normal(scores, quantile), quantile, **context)
