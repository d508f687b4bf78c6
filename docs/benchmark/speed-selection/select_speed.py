"""Choose the class models' batch size / epochs and the scoring sample count on held-out
training images only (never test images): for every normal class c, a model per training
configuration, then each score at several importance-sample counts.

Normal images: the calibration half of class c's validation images (neither trained on nor
used for early stopping or standardisation). Anomalies: up to 3,000 validation images of the
other classes (seeded draw). Both are training-split images; the test split is never loaded.
Each (class, setting, sample count) appends one JSON line to --out, so an interrupted run can
go on with --classes; delete the file to start afresh.

    PYTHONPATH=src python docs/benchmark/speed-selection/select_speed.py \
        --splits data/prepared/splits.npz --out results.jsonl
"""

import argparse
import dataclasses
import json
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from convvae.anomaly.scores import all_scores, fit_reference
from convvae.anomaly.thresholds import selection_and_calibration
from convvae.benchmark.oneclass import class_images, train_class_model
from convvae.config import load_params
from convvae.data.sources import load_splits

TRAIN_CONFIGS = [(64, 20), (128, 20), (64, 14)]  # (batch_size, epochs)
SAMPLES = [32, 16, 8]
MAX_ANOMALIES = 3000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--splits", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True)
    parser.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    args = parser.parse_args()
    params = load_params(args.params)
    splits = load_splits(args.splits)
    noise = params.anomaly.noise_seed
    for c in args.classes:
        train_normal = class_images(splits.train, c, "training")
        selection, calibration = selection_and_calibration(
            class_images(splits.val, c, "validation")
        )
        others = splits.val.images[splits.val.labels != c]
        rng = np.random.default_rng(c)
        others = others[rng.permutation(len(others))[:MAX_ANOMALIES]]
        images = np.concatenate([calibration, others])
        labels = np.r_[np.zeros(len(calibration)), np.ones(len(others))]
        for batch_size, epochs in TRAIN_CONFIGS:
            cfg = dataclasses.replace(
                params.benchmark_train(0), batch_size=batch_size, epochs=epochs
            )
            started = time.perf_counter()
            result = train_class_model(params, cfg, train_normal, selection)
            train_seconds = time.perf_counter() - started
            for k in SAMPLES:
                started = time.perf_counter()
                fit_reference(result.model, train_normal, selection, k, noise)
                scores = all_scores(result.model, images, k, noise)
                row = {
                    "class": c,
                    "batch_size": batch_size,
                    "epochs": epochs,
                    "epochs_run": len(result.history),
                    "samples": k,
                    "train_seconds": train_seconds,
                    "score_seconds": time.perf_counter() - started,
                    "normals": int(len(calibration)),
                    "anomalies": int(len(others)),
                    "roc_auc": {n: float(roc_auc_score(labels, s)) for n, s in scores.items()},
                }
                with open(args.out, "a") as out:
                    out.write(json.dumps(row) + "\n")
                print(
                    c,
                    batch_size,
                    epochs,
                    k,
                    round(train_seconds, 1),
                    round(row["score_seconds"], 1),
                    round(row["roc_auc"]["fused"], 4),
                    flush=True,
                )


if __name__ == "__main__":
    main()
