"""DVC stage `benchmark@<c>`: the one-class protocol for one normal class c.

Trains `benchmark.seeds` ConvVAEs on the training images of class c only, scores every test image
(class c normal, all others anomalous) and the class's validation images, and writes the metrics,
the ROC curve, the model of seed 0 and its threshold (a quantile of the normal validation scores,
never chosen on test labels). Imports no MLflow: the report stage logs every class in one
process (a nested run per class under the benchmark's parent run).

    python -m pipeline.benchmark --normal-class 3
"""

import argparse
import json
import time

import numpy as np
import torch

from convvae.anomaly import (
    COMPRESSOR,
    SCORES,
    all_scores,
    compressed_bits,
    detection_metrics,
    roc_points,
    threshold_from_normal,
    threshold_record,
)
from convvae.cli import run_stage
from convvae.config import Params, TrainConfig, load_params
from convvae.data import LabelledImages, load_splits
from convvae.errors import DataError
from convvae.files import write_json
from convvae.model import ConvVAE, resolve_architecture, save_model
from convvae.train import Trainer, TrainResult
from pipeline import layout


def class_images(part: LabelledImages, normal_class: int, split: str) -> np.ndarray:
    """The images of ``normal_class`` in one split; none is a DataError."""
    images = part.images[part.labels == normal_class]
    if len(images) == 0:
        raise DataError(
            f"{layout.PREPARED_SPLITS}: no {split} images of class {normal_class}; remove it from "
            "benchmark.classes or raise data.max_train_images"
        )
    return images


def main(normal_class: int) -> None:
    params = load_params(layout.PARAMS)
    cfg = params.benchmark
    splits = load_splits(layout.PREPARED_SPLITS)
    class_name = json.loads(layout.MANIFEST.read_text())["class_names"][normal_class]
    train_normal = class_images(splits.train, normal_class, "training")
    val_normal = class_images(splits.val, normal_class, "validation")
    test = splits.test
    labels = (test.labels != normal_class).astype(np.int64)  # 1 = anomalous
    if labels.all() or not labels.any():
        raise DataError(
            f"{layout.PREPARED_SPLITS}: the test split needs normal and anomalous images of "
            f"class {normal_class}; raise data.max_train_images"
        )
    arch = resolve_architecture(params.model, train_normal.shape[1:])
    # The compressor's lengths depend on the images only: once per data set, for every seed.
    test_bits, val_bits = compressed_bits(test.images), compressed_bits(val_normal)

    test_scores = {name: [] for name in SCORES}
    thresholds = {name: [] for name in SCORES}
    epochs_run, train_seconds, score_seconds, first_model = [], 0.0, 0.0, None
    for seed in range(cfg.seeds):
        started = time.perf_counter()
        result = train_one_class(params, arch, train_normal, val_normal, seed)
        train_seconds += time.perf_counter() - started
        started = time.perf_counter()
        on_test = all_scores(result.model, test.images, cfg.iwae_samples, seed, test_bits)
        on_val = all_scores(result.model, val_normal, cfg.iwae_samples, seed, val_bits)
        score_seconds += time.perf_counter() - started
        for name in SCORES:
            test_scores[name].append(on_test[name])
            thresholds[name].append(threshold_from_normal(on_val[name], cfg.threshold_quantile))
        epochs_run.append(len(result.history))
        if seed == 0:
            first_model = result.model  # the stored model, scored by `convvae score`
        print(
            f"class {normal_class} ({class_name}), seed {seed}: {len(result.history)} epochs, "
            f"best val {result.best_val_loss:.2f} nats/image"
        )

    per_score = {
        name: detection_metrics(
            labels,
            np.stack(test_scores[name], axis=1),
            np.array(thresholds[name]),
            cfg.bootstrap_resamples,
            seed=normal_class,
        )
        for name in SCORES
    }
    metrics = {
        "normal_class": normal_class,
        "class_name": class_name,
        "data_source": params.data.source,
        "train_images": len(train_normal),
        "val_normal_images": len(val_normal),
        "test_images": len(labels),
        "test_anomalous": int(labels.sum()),
        "seeds": cfg.seeds,
        "epochs_run_mean": float(np.mean(epochs_run)),
        "train_seconds": train_seconds,
        "score_images_per_s": cfg.seeds * (len(labels) + len(val_normal)) / score_seconds,
        "compressor": COMPRESSOR,
        "scores": per_score,
    }
    model_dir = layout.ANOMALY_MODELS / f"class_{normal_class}"
    save_model(first_model, model_dir / "model.pt")
    record = threshold_record(
        cfg.score,
        thresholds[cfg.score][0],
        cfg.threshold_quantile,
        cfg.iwae_samples,
        normal_class=normal_class,
        class_name=class_name,
        data_source=params.data.source,
    )
    record["thresholds"] = {name: values[0] for name, values in thresholds.items()}
    write_json(record, model_dir / layout.THRESHOLD_FILE)
    roc_path = layout.BENCHMARK_PLOTS / f"roc_class_{normal_class}.json"
    write_json(roc_points(labels, test_scores[cfg.score][0]), roc_path)
    write_json(metrics, layout.BENCHMARK_METRICS / f"class_{normal_class}.json")
    summary = ", ".join(f"{name} {m['roc_auc']:.3f}" for name, m in per_score.items())
    print(f"class {normal_class} ROC-AUC: {summary}")


def train_one_class(
    params: Params, arch, train_normal: np.ndarray, val_normal: np.ndarray, seed: int
) -> TrainResult:
    """One ConvVAE trained on the normal class (early stopping on its validation images)."""
    cfg = params.benchmark
    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        early_stopping_patience=cfg.early_stopping_patience,
        seed=seed,
        device=cfg.device,
    )
    torch.manual_seed(seed)
    trainer = Trainer(ConvVAE(arch), train_cfg, beta=params.model.beta, progress=False)
    return trainer.fit(torch.from_numpy(train_normal), torch.from_numpy(val_normal))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--normal-class", type=int, required=True, help="0..9")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    run_stage(lambda: main(args.normal_class))
