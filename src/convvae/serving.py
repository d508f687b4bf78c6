"""The pyfunc flavour of a trained ConvVAE, for `mlflow models serve` and `mlflow.pyfunc`.

MLflow imports this module (``loader_module="convvae.serving"``) and calls ``_load_pyfunc`` with
the logged model file; no pickled code is involved.
"""

from __future__ import annotations

import numpy as np
import torch

from convvae.evaluate import per_image_neg_elbo, reconstruct
from convvae.model import ConvVAE, check_pixels, load_model

# The same noise for every request: a score must not change between two calls (scores are
# single-sample negative ELBOs, in nats per image).
SCORING_SEED = 0


class ScoringModel:
    """Scores and reconstructs batches of images with one ConvVAE."""

    def __init__(self, model: ConvVAE) -> None:
        self.model = model.eval()

    def predict(self, model_input, params: dict | None = None) -> dict[str, np.ndarray]:
        """model_input: float pixels in [0, 1], shape (N, C, H, W) or (N, H, W).

        Returns {"anomaly_score": float64 (N,), nats; higher is more anomalous,
        "reconstruction": float32 (N, C, H, W), Bernoulli means}.
        """
        images = self._as_images(model_input)
        recon_nll, kl = per_image_neg_elbo(self.model, images, seed=SCORING_SEED)
        return {
            "anomaly_score": (recon_nll + kl).numpy(),
            "reconstruction": reconstruct(self.model, images).numpy(),
        }

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


def _load_pyfunc(data_path: str) -> ScoringModel:
    return ScoringModel(load_model(data_path))
