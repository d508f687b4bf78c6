"""The pyfunc flavour of a trained ConvVAE, for `mlflow models serve` and `mlflow.pyfunc`.

MLflow imports this module (``loader_module="convvae.serving"``) and calls ``_load_pyfunc`` with
the logged model file and the model's threshold record (its ``model_config``); no pickled code
is involved. Scores come from ``convvae.anomaly.scores.score_images``, the function `convvae score`
and the benchmark use, with the stored score name, sample count and noise seed.
"""

from __future__ import annotations

import numpy as np
import torch

from convvae.anomaly.maps import smoothed_maps
from convvae.anomaly.scores import ScoreSpec, score_images
from convvae.anomaly.thresholds import StoredThreshold, parse_threshold
from convvae.data.images import check_pixels
from convvae.model.vae import ConvVAE, load_model
from convvae.runtime.allocator import keep_freed_memory
from convvae.uses.evaluation import reconstruct

# Images per request: a bound on the memory and time one request can take (about 10 s on two
# CPU cores at 28x28); a larger batch is refused with a one-line reason, split it.
MAX_BATCH = 1024
# Outputs a client may ask for with params={"return_...": true}; each costs a decode per image.
OPTIONAL_OUTPUTS = {"return_reconstruction": "reconstruction", "return_anomaly_map": "anomaly_map"}
PARAMS_EXAMPLE = dict.fromkeys(OPTIONAL_OUTPUTS, False)


class ScoringModel:
    """Scores batches of images with one ConvVAE; reconstructions and maps on request."""

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
        "is_anomaly" (bool (N,))}; with params {"return_reconstruction": true} also
        "reconstruction" (float32 (N, C, H, W), the decoded means), with
        {"return_anomaly_map": true} "anomaly_map" (float32 (N, H, W), where each image is
        anomalous). At most MAX_BATCH images per call.
        """
        wanted = {k for k, v in (params or {}).items() if k in OPTIONAL_OUTPUTS and v}
        images = self._as_images(model_input)
        scores = score_images(self.model, images.numpy(), self.spec)
        out = {"anomaly_score": scores}
        if self.stored is not None:
            decided = self.stored.decide(scores)
            out["normalized_score"] = decided["normalized_score"]
            out["is_anomaly"] = decided["is_anomaly"]
        if "return_reconstruction" in wanted:
            out["reconstruction"] = reconstruct(self.model, images).numpy()
        if "return_anomaly_map" in wanted:
            out["anomaly_map"] = smoothed_maps(self.model, images.numpy())
        return out

    def _as_images(self, model_input) -> torch.Tensor:
        arch = self.model.arch
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
    import json

    keep_freed_memory()  # the server scores in this process (convvae.runtime.allocator)
    stored = None
    if model_config:
        stored = parse_threshold(json.dumps(dict(model_config)), "the model's threshold record")
    return ScoringModel(load_model(data_path), stored)
