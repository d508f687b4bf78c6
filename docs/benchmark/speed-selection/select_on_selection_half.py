"""The class models' batch size / epochs and the scoring sample count, chosen again on data
that never calibrates a threshold (issue 27): select_speed.py chose them on the calibration
half of each class's validation images; this script scores the same settings on the selection
half (the half early stopping and the fused statistics use, never the threshold).

Normal images: the selection half of class c's validation images. Anomalies: up to 3,000
validation images of the other classes (seeded draw, as select_speed.py). The test split is
never loaded. One JSON line per (class, setting, sample count) to --out; summarize.py reads it.

    PYTHONPATH=src python docs/benchmark/speed-selection/select_on_selection_half.py \\
        --splits data/prepared/splits.npz --out mnist-5k-selection-half.jsonl
"""

import argparse
import dataclasses
import json
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from convvae.anomaly.fit import fit_reference, train_and_fit
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.benchmark.oneclass import class_images
from convvae.config import load_params
from convvae.data.splits import load_splits, selection_and_calibration

TRAIN_CONFIGS = [(64, 20), (128, 20), (64, 14)]  # (batch_size, epochs), as select_speed.py
SAMPLES = [32, 16, 8]
MAX_ANOMALIES = 3000
SCORES = ("fused", "excess_nll", "hidden_knn", "cosine_knn")


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
        val_normal = class_images(splits.val, c, "validation")
        selection, _ = selection_and_calibration(val_normal)
        others = splits.val.images[splits.val.labels != c]
        others = others[np.random.default_rng(c).permutation(len(others))[:MAX_ANOMALIES]]
        images = np.concatenate([selection, others])
        labels = np.r_[np.zeros(len(selection)), np.ones(len(others))]
        for batch_size, epochs in TRAIN_CONFIGS:
            cfg = dataclasses.replace(
                params.benchmark_train(0), batch_size=batch_size, epochs=epochs
            )
            started = time.perf_counter()
            fitted = train_and_fit(
                params.model, cfg, params.anomaly, train_normal, val_normal, log=lambda _: None
            )
            train_seconds = time.perf_counter() - started
            model = fitted.training.model
            for k in SAMPLES:
                started = time.perf_counter()
                reference = fit_reference(model, train_normal, selection, k, noise)
                scores = every_score(Scorer(model, reference, ScoreSpec("fused", k, noise)),
                                     images, SCORES)  # fmt: skip
                row = {
                    "class": c, "batch_size": batch_size, "epochs": epochs,
                    "epochs_run": len(fitted.training.history), "samples": k,
                    "train_seconds": train_seconds,
                    "score_seconds": time.perf_counter() - started,
                    "normals": int(len(selection)), "anomalies": int(len(others)),
                    "roc_auc": {n: float(roc_auc_score(labels, s)) for n, s in scores.items()},
                }  # fmt: skip
                with open(args.out, "a") as out:
                    out.write(json.dumps(row) + "\n")
                print(c, batch_size, epochs, k, round(train_seconds, 1),
                      round(row["roc_auc"]["fused"], 4), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
