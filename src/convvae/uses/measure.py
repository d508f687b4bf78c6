"""The other three uses, measured on the test split: generation, compression, imputation.

``measure_uses`` is what the evaluate stage records in metrics/uses.json, with its figures.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from convvae.config import EvaluateConfig
from convvae.data.images import image_grid, save_png
from convvae.data.splits import Splits
from convvae.model.vae import ConvVAE
from convvae.runtime.files import atomic_path
from convvae.uses.compress import rate_distortion, save_rate_distortion_plot
from convvae.uses.generate import interpolate, sample_quality
from convvae.uses.impute import imputation_benchmark, save_imputation_grid

RATE_DISTORTION_COLUMNS = ["method", "bytes_per_image", "psnr_db", "mse", "bce_nats"]


def measure_uses(
    model: ConvVAE, splits: Splits, cfg: EvaluateConfig, plots: Path, rate_distortion_csv: Path
) -> dict:
    """Generation, compression and imputation on the test split, as nested metrics; writes
    interpolation.png, rate_distortion.png, imputation.png into ``plots`` and the
    rate-distortion table to ``rate_distortion_csv``."""
    train = torch.from_numpy(splits.train.images)
    test = torch.from_numpy(splits.test.images)
    if len(np.unique(splits.train.labels)) > 1:
        generation = sample_quality(
            model,
            (train, splits.train.labels),
            (test, splits.test.labels),
            cfg.classifier_epochs,
            cfg.seed,
        )
    else:  # the Fréchet distance is measured in the features of a classifier of the classes
        generation = {"note": "one class of training images: no classifier, no Fréchet distance"}
    walks = [interpolate(model, test[i], test[i + 1], 10) for i in range(0, 8, 2)]
    save_png(image_grid(torch.cat(walks), nrow=10), plots / "interpolation.png")

    rows = rate_distortion(model, test, cfg.jpeg_qualities)
    with atomic_path(rate_distortion_csv) as tmp, tmp.open("w", newline="") as file:
        writer = csv.DictWriter(file, RATE_DISTORTION_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    save_rate_distortion_plot(rows, plots / "rate_distortion.png")
    compression = {
        "rate": "bytes of the code array per image; PNG/JPEG: file bytes per image",
        "lossless": "png (psnr_db null)",
        **{row["method"]: {k: v for k, v in row.items() if k != "method"} for row in rows},
    }

    imputation, figure = imputation_benchmark(
        model, train, test, iterations=cfg.imputation_iterations, seed=cfg.seed
    )
    save_imputation_grid(*figure, plots / "imputation.png")
    imputation["iterations"] = cfg.imputation_iterations
    return {"generation": generation, "compression": compression, "imputation": imputation}
