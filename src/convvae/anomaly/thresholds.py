"""From scores to decisions: conformal thresholds on held-out normal images, stored with models.

For a target false-positive rate alpha the threshold is the conformal quantile of n calibration
scores (normal images that neither trained nor selected the model), the ceil((n + 1)(1 - alpha))-th
smallest: a new normal image exceeds it with probability at most alpha, on average over
calibration sets (when it is exchangeable with the calibration images). Every score also gets
its conformal p-value against the calibration scores: 0.05 means "as unusual as the most unusual
5% of normal images"; small means unusual.

A model's threshold record (``ThresholdRecord``; JSON in ``threshold.json`` beside the model
file, and the ``THRESHOLD_TAG`` of its registered version) says how to score (a ``ScoreSpec``),
where to cut and the calibration scores, so `convvae score`, serving and the ONNX export decide
the same way wherever the model goes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ALL_SCORES, ScoreSpec, current_name
from convvae.anomaly.scoring import score_and_map
from convvae.config import MAX_SAMPLES, AnomalyConfig
from convvae.errors import DataError

THRESHOLD_TAG = "anomaly.threshold"
_FIX = "re-run the stage that wrote it (dvc repro -f evaluate / benchmark), which re-registers"


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


def fpr_spread(n_calibration: int, target_fpr: float, level: float = 0.9) -> tuple[float, float]:
    """Where one deployed threshold's false-positive rate falls, ``level`` of the time: cut at
    the r-th smallest of n exchangeable calibration scores, the share of new normal images above
    it follows Beta(n + 1 - r, r) over calibration sets (its mean is the marginal guarantee).
    Returns the central interval (low, high)."""
    from scipy.stats import beta

    rank = min(math.ceil((n_calibration + 1) * (1 - target_fpr)), n_calibration)
    spread = beta(n_calibration + 1 - rank, rank)
    return float(spread.ppf((1 - level) / 2)), float(spread.ppf((1 + level) / 2))


# What the threshold promises, in the record and the model card.
GUARANTEE = (
    "marginal: over calibration sets, a new normal image is flagged with probability at most "
    "target_fpr (when it is exchangeable with the calibration images); one deployed threshold's "
    "rate varies around that (expected_fpr_90)"
)


def p_values(scores: np.ndarray, calibration_scores: np.ndarray) -> np.ndarray:
    """Conformal p-values, float64 (N,): (1 + #{calibration scores >= s}) / (n + 1) for each s;
    small = unusual. Uniform on normal images, near 1 / (n + 1) for clear anomalies."""
    calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    at_least = len(calibration) - np.searchsorted(calibration, np.asarray(scores), side="left")
    return (1 + at_least) / (len(calibration) + 1)


@dataclass(frozen=True)
class ThresholdRecord:
    """How to score, where to cut, and the calibration scores that turn a score into a p-value."""

    spec: ScoreSpec
    threshold: float  # flag images whose score is above this
    target_fpr: float
    normal_class: int | None  # None: the model was trained on every class
    calibration_scores: np.ndarray  # float64 (n,), sorted
    context: dict = field(default_factory=dict, compare=False)  # class name, data source, ...

    def decide(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        """Per image: ``score``, ``p_value`` (conformal) and ``is_anomaly`` (score above the
        threshold)."""
        scores = np.asarray(scores, dtype=np.float64)
        return {
            "score": scores,
            "p_value": p_values(scores, self.calibration_scores),
            "is_anomaly": scores > self.threshold,
        }

    @property
    def calibration(self) -> str:
        """How the calibration scores were found: split or cross_fit (older records: split)."""
        return str(self.context.get("calibration", "split"))

    def as_json(self) -> dict:
        """The record as threshold.json holds it. ``iwae_samples`` repeats ``samples`` for one
        release, so that older readers load newer records."""
        n = len(self.calibration_scores)
        return {
            **self.context,
            "score": self.spec.name,
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "calibration": self.calibration,
            "calibration_images": n,
            "achievable_fpr": achievable_fpr(n),
            "expected_fpr_90": list(fpr_spread(n, self.target_fpr)),
            "guarantee": GUARANTEE,
            "samples": self.spec.samples,
            "iwae_samples": self.spec.samples,
            "noise_seed": self.spec.noise_seed,
            "normal_class": self.normal_class,
            "calibration_scores": self.calibration_scores.tolist(),
        }


def make_record(
    spec: ScoreSpec,
    calibration_scores: np.ndarray,
    target_fpr: float,
    normal_class: int | None = None,
    **context: object,
) -> ThresholdRecord:
    """The conformal cut of ``calibration_scores`` for ``target_fpr``, with the normal class
    (None: every class) and ``context`` (class name, data source, the cuts of other scores)."""
    calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    threshold = conformal_threshold(calibration, target_fpr)
    return ThresholdRecord(spec, threshold, target_fpr, normal_class, calibration, dict(context))


def calibrate(
    scorer: Scorer, calibration_images: np.ndarray, target_fpr: float, **context: object
) -> ThresholdRecord:
    """The split-conformal record of ``scorer``'s score on ``calibration_images`` (uint8
    (N, C, H, W) normal images held out from training and from early stopping), with the map
    value overlays draw fully hot: the 99.9th percentile of those images' maps."""
    scores, maps = score_and_map(scorer, calibration_images, (scorer.spec.name,))
    context.setdefault("map_scale", map_scale_of(maps))
    return make_record(scorer.spec, scores[scorer.spec.name], target_fpr, **context)


def map_scale_of(maps: np.ndarray) -> float:
    """The value of held-out normal images' maps drawn fully hot: their 99.9th percentile, so
    colour means "hotter than almost every normal pixel" (never images of the reference bank,
    whose self-matches are 0)."""
    return float(np.quantile(maps, 0.999)) if maps.size else 1.0


def read_record(path: str | Path) -> ThresholdRecord:
    """Read a threshold.json written beside a model; missing or malformed is a DataError."""
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
    return parse_record(text, str(path))


def parse_record(text: str, where: str) -> ThresholdRecord:
    """A record from its JSON text (older records: ``iwae_samples``, ``recon_bce``); ``where`` (a
    file or models:/ URI) names it in the DataError a malformed record raises."""
    try:
        raw = dict(json.loads(text))
        normal_class = raw.pop("normal_class", None)
        samples = raw.pop("samples", None)
        samples = raw.pop("iwae_samples") if samples is None else samples
        for derived in ("iwae_samples", "achievable_fpr", "calibration_images",
                        "expected_fpr_90", "guarantee"):  # fmt: skip
            raw.pop(derived, None)
        record = ThresholdRecord(
            spec=ScoreSpec(
                current_name(str(raw.pop("score"))), int(samples), int(raw.pop("noise_seed"))
            ),
            threshold=float(raw.pop("threshold")),
            # Records written before the target was stored were cut at the default.
            target_fpr=float(raw.pop("target_fpr", AnomalyConfig.target_fpr)),
            normal_class=None if normal_class is None else int(normal_class),
            calibration_scores=np.sort(np.asarray(raw.pop("calibration_scores"), dtype=np.float64)),
            context=raw,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"{where}: not a threshold record ({type(err).__name__}: {err}); {_FIX}"
        ) from None
    if record.spec.name not in ALL_SCORES or not 1 <= record.spec.samples <= MAX_SAMPLES:
        raise DataError(
            f"{where}: unknown score {record.spec.name!r} or samples outside 1..{MAX_SAMPLES}; "
            f"{_FIX}"
        )
    if record.calibration_scores.ndim != 1 or len(record.calibration_scores) == 0:
        raise DataError(f"{where}: no calibration scores; {_FIX}")
    return record
