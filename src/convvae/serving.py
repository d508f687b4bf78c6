"""The pyfunc flavour of a trained ConvVAE, for `mlflow models serve` and `mlflow.pyfunc`.

MLflow imports this module (``loader_module="convvae.serving"``: registered models name it, so
it stays here) and calls ``_load_pyfunc`` with the logged model file and the model's threshold
record (its ``model_config``); no pickled code is involved. It decides with
``convvae.anomaly.detector.Detector``, as `convvae score` and promotion do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from convvae import __version__
from convvae.anomaly.detector import Detector, detector_from
from convvae.anomaly.reference import load_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import score_and_map
from convvae.anomaly.thresholds import parse_record
from convvae.data.images import check_pixels
from convvae.errors import DataError
from convvae.runtime.allocator import keep_freed_memory
from convvae.uses.evaluation import reconstruct

# Images per request: a bound on the memory and time one request can take (about 10 s on two
# CPU cores at 28x28); a larger batch is refused with a one-line reason, split it.
MAX_BATCH = 1024
# Outputs a client may ask for with params={"return_...": true}; each costs a decode per image.
OPTIONAL_OUTPUTS = {"return_reconstruction": "reconstruction", "return_anomaly_map": "anomaly_map"}
PARAMS_EXAMPLE = dict.fromkeys(OPTIONAL_OUTPUTS, False)
# The MLmodel metadata key naming the convvae version that logged a model (and must serve it).
PACKAGE_VERSION_KEY = "convvae_version"
# The response's names before 0.2 (served beside the new ones for one release).
OLD_NAMES = {"score": "anomaly_score", "p_value": "normalized_score"}


class ScoringModel:
    """Scores batches of images with one detector (or, for a model registered without a
    threshold record, a scorer alone); reconstructions and maps on request."""

    def __init__(self, scorer: Scorer, detector: Detector | None = None) -> None:
        self.scorer = scorer
        self.detector = detector

    def predict(self, model_input, params: dict | None = None) -> dict[str, np.ndarray]:
        """model_input: float pixels in [0, 1], shape (N, C, H, W) or (N, H, W).

        Returns {"score": float64 (N,), the stored score, higher is more anomalous; with a
        threshold record also "p_value" (conformal, float64 (N,); small = unusual) and
        "is_anomaly" (bool (N,))}, and the old names of OLD_NAMES for one release; with params
        {"return_reconstruction": true} also "reconstruction" (float32 (N, C, H, W), the decoded
        means), with {"return_anomaly_map": true} "anomaly_map" (float32 (N, H, W), where each
        image is anomalous). At most MAX_BATCH images per call.
        """
        wanted = {k for k, v in (params or {}).items() if k in OPTIONAL_OUTPUTS and v}
        images = self._as_images(model_input)
        name = self.scorer.spec.name
        # The score and the map from one pass (patch_knn is read off the map).
        scores, maps = score_and_map(
            self.scorer, images.numpy(), (name,), with_map="return_anomaly_map" in wanted
        )
        if self.detector is not None:
            out = self.detector.record.decide(scores[name])
        else:
            out = {"score": scores[name]}
        out |= {old: out[new] for new, old in OLD_NAMES.items() if new in out}
        if "return_reconstruction" in wanted:
            out["reconstruction"] = reconstruct(self.scorer.model, images).numpy()
        if maps is not None:
            out["anomaly_map"] = maps
        return out

    def _as_images(self, model_input) -> torch.Tensor:
        arch = self.scorer.model.arch
        expected = arch.image_shape
        array = np.asarray(model_input, dtype=np.float32)
        if array.ndim == 3 and arch.image_channels == 1:
            array = array[:, None]
        if array.ndim != 4 or array.shape[1:] != expected:
            raise ValueError(
                f"images must have shape (N, {', '.join(map(str, expected))}), got {array.shape}"
            )
        if len(array) == 0:
            raise ValueError("no images in the request; send at least one")
        if len(array) > MAX_BATCH:
            raise ValueError(
                f"{len(array)} images in one request; send at most {MAX_BATCH} per request"
            )
        images = torch.from_numpy(array)
        check_pixels(images)
        return images


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> ScoringModel:
    keep_freed_memory()  # the server scores in this process (convvae.runtime.allocator)
    _check_package_version(Path(data_path).parents[1])
    if model_config:
        record = parse_record(json.dumps(dict(model_config)), "the model's threshold record")
        detector = detector_from(data_path, record)
        return ScoringModel(detector.scorer, detector)
    # Registered before threshold records: scores only, as such versions were served then
    # (fused where the model file has a reference, else the likelihood's deviance).
    model, reference = load_fitted_model(data_path)
    name = "fused" if reference is not None else "excess_nll"
    return ScoringModel(Scorer(model, reference, ScoreSpec(name)))


def _check_package_version(model_folder: Path) -> None:
    """The served model runs the installed convvae (its artifact holds no code): the version
    that logged it, recorded in its MLmodel metadata, or a DataError naming both."""
    if not (model_folder / "MLmodel").is_file():  # a model file outside an artifact
        return
    from mlflow.models import Model

    logged_by = (Model.load(str(model_folder)).metadata or {}).get(PACKAGE_VERSION_KEY)
    if logged_by is not None and logged_by != __version__:
        raise DataError(
            f"{model_folder}: logged by convvae {logged_by}, but convvae {__version__} is "
            f"installed; install convvae {logged_by} to serve it, or re-register the model"
        )
