"""A detector: a scorer paired with its threshold record, as PyOD pairs ``decision_function``
and ``predict`` on one object. `convvae score`, the served model and promotion build theirs
here (``detector_from``, ``load_detector``) and ask it to ``decide``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convvae.anomaly.reference import load_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scoring import score_and_map, score_images
from convvae.anomaly.thresholds import ThresholdRecord, read_record
from convvae.runtime.files import THRESHOLD_FILE


@dataclass(frozen=True)
class Detector:
    """``scorer`` computes the score that ``record`` names and cuts."""

    scorer: Scorer
    record: ThresholdRecord

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        """The record's score of uint8 (N, C, H, W) images (or float in [0, 1]), float64 (N,);
        higher is more anomalous."""
        return score_images(self.scorer, images)

    def decide(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Per image: ``score``, ``p_value`` and ``is_anomaly`` (``ThresholdRecord.decide``)."""
        return self.record.decide(self.decision_function(images))

    def decide_and_map(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``decide`` and the default map of every image, float32 (N, H, W), from one pass."""
        scores, maps = score_and_map(self.scorer, images, (self.scorer.spec.name,))
        return self.record.decide(scores[self.scorer.spec.name]), maps

    def predict(self, images: np.ndarray) -> np.ndarray:
        """bool (N,): the images whose score is above the threshold."""
        return self.decide(images)["is_anomaly"]


def detector_from(model_file: str | Path, record: ThresholdRecord) -> Detector:
    """The detector of a model file (with its reference) and its threshold record."""
    model, reference = load_fitted_model(model_file)
    return Detector(Scorer(model, reference, record.spec), record)


def load_detector(model_file: str | Path) -> Detector:
    """The detector of a model file and the threshold.json beside it (the model file is read
    first: a missing one is reported as such, not as a missing threshold)."""
    model, reference = load_fitted_model(model_file)
    record = read_record(Path(model_file).with_name(THRESHOLD_FILE))
    return Detector(Scorer(model, reference, record.spec), record)
