"""The pyfunc flavour of a trained ConvVAE, for `mlflow models serve` and `mlflow.pyfunc`.

MLflow imports this module (``loader_module="convvae.serving"``) and calls ``_load_pyfunc`` with
the logged model file and the model's threshold record (its ``model_config``); no pickled code
is involved. Scores come from ``convvae.anomaly.score_images``, the function `convvae score`
and the benchmark use, with the stored score name, sample count and noise seed.
"""

from __future__ import annotations

import numpy as np
import torch

from convvae.anomaly import ScoreSpec, score_images
from convvae.decision import StoredThreshold, parse_threshold
from convvae.evaluate import reconstruct
from convvae.images import check_pixels
from convvae.model import ConvVAE, load_model


class ScoringModel:
    """Scores and reconstructs batches of images with one ConvVAE."""

    def __init__(self, model: ConvVAE, stored: StoredThreshold | None = None) -> None:
        self.model = model.eval()
        self.stored = stored
        # Without a stored record: the default score where the model file has its reference.
        fallback = ScoreSpec() if model.reference is not None else ScoreSpec("excess_nll")
        self.spec = stored.spec if stored is not None else fallback

    def predict(self, model_input, params: dict | None = None) -> dict[str, np.ndarray]:
        """model_input: float pixels in [0, 1], shape (N, C, H, W) or (N, H, W).

        Returns {"anomaly_score": float64 (N,), the stored score; higher is more anomalous;
        with a stored threshold also "normalized_score" (conformal p-value, float64 (N,)) and
        "is_anomaly" (bool (N,)); "reconstruction": float32 (N, C, H, W), Bernoulli means}.
        """
        images = self._as_images(model_input)
        scores = score_images(self.model, images.numpy(), self.spec)
        out = {"anomaly_score": scores}
        if self.stored is not None:
            decided = self.stored.decide(scores)
            out["normalized_score"] = decided["normalized_score"]
            out["is_anomaly"] = decided["is_anomaly"]
        out["reconstruction"] = reconstruct(self.model, images).numpy()
        return out

    def _as_images(self, model_input) -> torch.Tensor:
        arch = self.model.arch
        expected = (arch.image_channels, arch.image_size, arch.image_size)
        array = np.asarray(model_input, dtype=np.float32)
        if array.ndim == 3 and arch.image_channels == 1:
            array = array[:, None]
        if array.ndim != 4 or array.shape[1:] != expected:
            raise ValueError(
                f"images must have shape (N, {', '.join(map(str, expected))}), got {array.shape}"
            )
        images = torch.from_numpy(array)
        check_pixels(images)
        return images


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> ScoringModel:
    import json

    stored = None
    if model_config:
        stored = parse_threshold(json.dumps(dict(model_config)), "the model's threshold record")
    return ScoringModel(load_model(data_path), stored)
