"""DVC stage `evaluate`: test-set likelihood (negative ELBO, IWAE) and figures, and the other
uses measured on the test split: sample quality, rate-distortion, imputation (metrics/uses.json).

Writes the model's anomaly threshold (models/threshold.json: benchmark.score's
benchmark.threshold_quantile on the validation split), read by `convvae score`.

Logs into the MLflow run that `train` opened, then logs the model and registers it as a version
of convvae-<data.source>, tagged with its test metrics and its threshold.
"""

import csv
import json
import time
from pathlib import Path

import torch

from convvae.anomaly import THRESHOLD_TAG, all_scores, threshold_from_normal, threshold_record
from convvae.cli import run_stage
from convvae.compress import rate_distortion, save_rate_distortion_plot
from convvae.config import BenchmarkConfig, EvaluateConfig, load_params
from convvae.data import Splits, load_splits
from convvae.evaluate import (
    per_image_iwae_nll,
    per_image_neg_elbo,
    save_latent_plot,
    save_reconstruction_grid,
    save_sample_grid,
)
from convvae.files import atomic_path, write_json
from convvae.generate import image_grid, interpolate, sample_quality
from convvae.images import save_png
from convvae.impute import imputation_benchmark, save_imputation_grid
from convvae.model import ConvVAE, load_model, resolve_architecture
from convvae.tracking import flatten, open_tracker, registered_model_name
from convvae.train import to_unit_interval
from pipeline import layout


def main() -> None:
    params = load_params(layout.PARAMS)
    cfg = params.evaluate
    tracker = open_tracker(params.tracking)
    splits = load_splits(layout.PREPARED_SPLITS)
    test_images = torch.from_numpy(splits.test.images)
    expected = resolve_architecture(params.model, tuple(test_images.shape[1:]))
    model = load_model(layout.MODEL, expected=expected)
    recon_nll, kl = per_image_neg_elbo(model, test_images, cfg.batch_size, cfg.seed)
    iwae_nll = per_image_iwae_nll(model, test_images, cfg.iwae_samples, seed=cfg.seed)
    metrics = {
        "likelihood": "bernoulli on grey levels in [0, 1], nats per image",
        "test_images": len(test_images),
        "test_neg_elbo": (recon_nll + kl).mean().item(),
        "test_recon_nll": recon_nll.mean().item(),
        "test_kl": kl.mean().item(),
        "test_iwae_nll": iwae_nll.mean().item(),
        "iwae_samples": cfg.iwae_samples,
    }
    plots = layout.EVALUATE_PLOTS
    save_sample_grid(model, cfg.grid_images, plots / "samples.png", seed=cfg.seed)
    save_reconstruction_grid(model, test_images[: cfg.grid_images], plots / "reconstructions.png")
    class_names = json.loads(layout.MANIFEST.read_text())["class_names"]
    save_latent_plot(model, test_images, splits.test.labels, class_names, plots / "latent.png")
    uses = measure_uses(model, splits, cfg, plots)
    threshold = anomaly_threshold(model, splits, params.benchmark)
    write_json(threshold, layout.MODEL_THRESHOLD)

    run_id = json.loads(layout.MLFLOW_RUN.read_text())["run_id"]
    if tracker is not None and run_id is not None:
        started = time.perf_counter()
        with tracker.run(run_id=run_id):
            print(f"logging to MLflow run {run_id} (opened by train)")
            tracker.log_metrics(metrics)
            tracker.log_metrics(flatten(uses))
            tracker.log_artifacts([plots], "evaluate")
            name = (
                registered_model_name(params.data.source)
                if params.tracking.register_model
                else None
            )
            version = tracker.log_model(
                model,
                layout.MODEL,
                to_unit_interval(test_images[:2]).numpy(),
                name,
                {
                    **{k: v for k, v in metrics.items() if k.startswith("test_")},
                    "run_id": run_id,
                    THRESHOLD_TAG: json.dumps(threshold),
                },
            )
        print(f"logged to MLflow in {time.perf_counter() - started:.1f} s")
        if version is not None:
            print(f"registered {name} version {version}")
        metrics["mlflow_run_id"] = run_id
        uses["mlflow_run_id"] = run_id
    write_json(metrics, layout.EVALUATE_METRICS)
    write_json(uses, layout.USES_METRICS)
    print(
        f"test -ELBO {metrics['test_neg_elbo']:.2f}, IWAE NLL (k={cfg.iwae_samples}) "
        f"{metrics['test_iwae_nll']:.2f} nats/image"
    )
    generation = uses["generation"]
    print(
        f"samples: Fréchet distance {generation['frechet_distance_samples']:.2f} "
        f"(real-image floor {generation['frechet_distance_real_floor']:.2f}); "
        f"imputation MSE, center mask: {uses['imputation']['center']['vae_mse']:.4f} "
        f"(training mean {uses['imputation']['center']['train_mean_mse']:.4f})"
    )


def anomaly_threshold(model: ConvVAE, splits: Splits, cfg: BenchmarkConfig) -> dict:
    """The threshold record of the model trained on every class: validation images are normal."""
    scores = all_scores(model, splits.val.images, cfg.iwae_samples, seed=0)[cfg.score]
    cut = threshold_from_normal(scores, cfg.threshold_quantile)
    return threshold_record(
        cfg.score, cut, cfg.threshold_quantile, cfg.iwae_samples, normal_class=None
    )


def measure_uses(model: ConvVAE, splits: Splits, cfg: EvaluateConfig, plots: Path) -> dict:
    """Generation, compression and imputation on the test split; writes their figures."""
    train = torch.from_numpy(splits.train.images)
    test = torch.from_numpy(splits.test.images)
    generation = sample_quality(
        model,
        (train, splits.train.labels),
        (test, splits.test.labels),
        cfg.classifier_epochs,
        cfg.seed,
    )
    walks = [interpolate(model, test[i], test[i + 1], 10) for i in range(0, 8, 2)]
    save_png(image_grid(torch.cat(walks), nrow=10), plots / "interpolation.png")

    rows = rate_distortion(model, test, cfg.jpeg_qualities)
    with atomic_path(layout.RATE_DISTORTION) as tmp, tmp.open("w", newline="") as file:
        columns = ["method", "bytes_per_image", "psnr_db", "mse", "bce_nats"]
        writer = csv.DictWriter(file, columns, extrasaction="ignore")
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


if __name__ == "__main__":
    run_stage(main)
