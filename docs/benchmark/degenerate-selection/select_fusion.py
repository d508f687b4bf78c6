"""Choose how the fused score combines its parts, and whether it needs a VAE-free image-statistics
part, so that degenerate frames (flat and nearly flat, any brightness) and other domains are
flagged without losing the class benchmark. Held-out *validation* images only, never test images,
and never the calibration half that sets thresholds:

- normal: the selection half of class c's validation images (it chose the epoch and the fused
  statistics; the calibration half stays untouched for thresholds);
- anomalies: up to 3,000 validation images of the other classes (seeded draw);
- degenerate and other-domain sets, generated: flat frames at 8 brightness levels, nearly flat
  frames (flat + Gaussian noise of 1-4 grey levels, gentle ramps of 5-20 levels, one faint blob),
  uniform noise, the other digit/clothes source, inverted copies of the normal images.

For each class: one class model (the benchmark's recipe, seed 0), then per variant the ROC-AUC of
the normal images against the other classes and against each generated set. One JSON line per
(source, class) in --out.

    PYTHONPATH=src python docs/benchmark/degenerate-selection/select_fusion.py \
        --source mnist-5k --out mnist-5k.jsonl
"""

import argparse
import json
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.knn import knn_distance
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.benchmark.oneclass import class_images
from convvae.config import DataConfig, load_params
from convvae.data.sources import load_source
from convvae.data.splits import load_configured, selection_and_calibration

MAX_ANOMALIES = 3000
PARTS = ("excess_nll", "hidden_knn", "cosine_knn")


def image_statistics(images: np.ndarray) -> np.ndarray:
    """log pixel standard deviation and log mean absolute neighbour difference, (N, 2)."""
    x = images.astype(np.float64) / 255
    flat = x.reshape(len(x), -1)
    grad = np.abs(np.diff(x, axis=-1)).mean((1, 2, 3)) + np.abs(np.diff(x, axis=-2)).mean((1, 2, 3))
    return np.stack([np.log(flat.std(1) + 1 / 255), np.log(grad / 2 + 1 / 255)], 1)


def stats_knn(train: np.ndarray, images: np.ndarray) -> np.ndarray:
    bank = image_statistics(train)
    scale = bank.std(0) + 1e-6
    return knn_distance(
        torch.from_numpy(image_statistics(images) / scale), torch.from_numpy(bank / scale)
    ).numpy()


def generated(normal: np.ndarray, other_source: np.ndarray, rng) -> dict[str, np.ndarray]:
    shape = (24, *normal.shape[1:])
    sets = {}
    for level in (0, 32, 64, 96, 128, 160, 208, 255):
        sets[f"flat_{level}"] = np.full(shape, level, np.uint8)
    near = []
    for level in rng.integers(0, 256, 48):
        base = np.full(shape[1:], float(level))
        kind = rng.integers(3)
        if kind == 0:
            base = base + rng.normal(0, rng.uniform(1, 4), shape[1:])
        elif kind == 1:
            ramp = np.linspace(-1, 1, shape[-1]) * rng.uniform(5, 20)
            base = base + ramp[None, None, :]
        else:
            yy, xx = np.mgrid[: shape[-2], : shape[-1]]
            cy, cx = rng.uniform(0, shape[-2]), rng.uniform(0, shape[-1])
            base = base + rng.uniform(5, 15) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40)
        near.append(np.clip(np.rint(base), 0, 255).astype(np.uint8))
    sets["nearly_flat"] = np.stack(near)
    sets["uniform_noise"] = rng.integers(0, 256, (100, *normal.shape[1:]), dtype=np.uint8)
    sets["other_source"] = other_source[:200]
    sets["inverted"] = 255 - normal[:100]
    return sets


def fusions(z: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    three = np.stack([z[p] for p in PARTS])
    four = np.stack([*three, z["stats_knn"]])
    return {
        "mean_z": three.mean(0),
        "mean_positive_z": np.clip(three, 0, None).mean(0),
        "mean_z_with_stats": four.mean(0),
        "mean_positive_z_with_stats": np.clip(four, 0, None).mean(0),
        "max_z_with_stats": four.max(0),
    }


def run_class(params, splits, c, other_source, rng) -> dict:
    train_normal = class_images(splits.train, c, "training")
    val_normal = class_images(splits.val, c, "validation")
    selection, _ = selection_and_calibration(val_normal)
    others = splits.val.images[splits.val.labels != c]
    others = others[rng.permutation(len(others))[:MAX_ANOMALIES]]
    started = time.perf_counter()
    fitted = train_and_fit(params.model, params.benchmark_train(0), params.anomaly, train_normal,
                           val_normal, log=lambda line: None)  # fmt: skip
    scorer = Scorer(fitted.training.model, fitted.reference, ScoreSpec("fused", 8, 0))
    ref = fitted.reference
    sets = {"other_classes": others, **generated(selection, other_source, rng)}
    every = {"normal": selection, **sets}
    raw = {name: every_score(scorer, images, PARTS) for name, images in every.items()}
    stats_center = stats_knn(train_normal, selection)
    for name, images in every.items():
        raw[name]["stats_knn"] = stats_knn(train_normal, images)
    center = {**ref.center, "stats_knn": float(stats_center.mean())}
    scale = {**ref.scale, "stats_knn": float(stats_center.std() + 1e-12)}
    result = {"class": c, "seconds": time.perf_counter() - started, "auc": {}}
    z = {n: {p: (v - center[p]) / scale[p] for p, v in parts.items()} for n, parts in raw.items()}
    scores = {n: {**parts, **fusions(parts)} for n, parts in z.items()}
    for name in sets:
        labels = np.r_[np.zeros(len(selection)), np.ones(len(sets[name]))]
        result["auc"][name] = {
            method: float(roc_auc_score(labels, np.r_[scores["normal"][method], values]))
            for method, values in scores[name].items()
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", choices=["mnist-5k", "fashion-mnist"], required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True)
    parser.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    args = parser.parse_args()
    params = load_params(args.params)
    _, splits = load_configured(DataConfig(source=args.source))
    other = "fashion-mnist" if args.source == "mnist-5k" else "mnist-5k"
    other_source = load_source(other).train.images
    for c in args.classes:
        rng = np.random.default_rng(c)
        result = {"source": args.source, **run_class(params, splits, c, other_source, rng)}
        with open(args.out, "a") as out:
            out.write(json.dumps(result) + "\n")
        worst = min(result["auc"][k]["mean_z"] for k in result["auc"] if k != "other_classes")
        print(f"{args.source} class {c}: {result['seconds']:.0f} s, worst generated {worst:.3f}")


if __name__ == "__main__":
    main()
