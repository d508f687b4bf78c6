"""What a features-only model file (``anomaly.store_images: false``) costs in score and saves
in bytes (issue 28, item 7). It chooses nothing: the default stays ``store_images: true``.

Per model: trained once with every default (a class model as the benchmark trains it, 14 epochs;
a folder model with 30 at most), then its reference fitted twice on the same selection half:
with the training images (``fused`` has four parts) and features-only (no ``cosine_knn``, so
``fused`` has three). Both score the same test images with the default score; the difference
of their ROC-AUC has a paired bootstrap interval. Also each model file's size.

    PYTHONPATH=src python docs/benchmark/features_only.py class mnist-5k --out F
    PYTHONPATH=src python docs/benchmark/features_only.py folder /tmp/sel/brick 64 --out F
    python docs/benchmark/features_only.py --table F
"""

import argparse
import tempfile
import time
from pathlib import Path

from folder_runs import interval_cell, read_rows, results_main
from sklearn.metrics import roc_auc_score

from convvae.anomaly.fit import fit_reference, train_and_fit
from convvae.anomaly.reference import save_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import score_images
from convvae.config import parse_params
from convvae.data.splits import load_configured, selection_and_calibration
from convvae.metrics.stats import roc_auc_difference


def compare(params, train_cfg, train, val, test_images, labels, name: str) -> dict:
    """One model, its two references, the default score's ROC-AUC with each, file sizes."""
    started = time.perf_counter()
    fitted = train_and_fit(params.model, train_cfg, params.anomaly, train, val,
                           log=lambda line: None)  # fmt: skip
    model, anomaly = fitted.training.model, params.anomaly
    selection, _ = selection_and_calibration(val)
    features = fit_reference(model, train, selection, anomaly.samples, anomaly.noise_seed,
                             store_images=False)  # fmt: skip
    spec = ScoreSpec.from_config(anomaly)
    scores, sizes = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for kind, reference in (("images", fitted.reference), ("features_only", features)):
            scores[kind] = score_images(Scorer(model, reference, spec), test_images)
            path = Path(scratch) / f"{kind}.pt"
            save_fitted_model(model, reference, path)
            sizes[kind] = path.stat().st_size
    diff = roc_auc_difference(labels, scores["features_only"], scores["images"])
    return {
        "model": name,
        "score": spec.name,
        "train_images": len(train),
        "roc_auc": {kind: float(roc_auc_score(labels, s)) for kind, s in scores.items()},
        "features_only_minus_images": [diff.difference, diff.ci_low, diff.ci_high],
        "file_bytes": sizes,
        "seconds": round(time.perf_counter() - started, 1),
    }


def class_rows(source: str):
    params = parse_params({"data": {"source": source}})
    _, splits = load_configured(params.data)
    for normal in range(10):
        train = splits.train.images[splits.train.labels == normal]
        val = splits.val.images[splits.val.labels == normal]
        labels = (splits.test.labels != normal).astype(int)
        yield compare(params, params.benchmark_train(), train, val, splits.test.images,
                      labels, f"{source} class {normal}")  # fmt: skip


def folder_rows(folder: str, size: int):
    data = {"source": "folder", "path": folder, "image_size": size}
    params = parse_params({"data": data, "train": {"epochs": 30}})
    _, splits = load_configured(params.data)
    labels = (splits.test.labels != 0).astype(int)
    name = f"{Path(folder).name} {size} px"
    yield compare(params, params.train, splits.train.images, splits.val.images,
                  splits.test.images, labels, name)  # fmt: skip


def table(path: str) -> str:
    lines = [
        "| model | score | with images | features only | difference [95%] | file MB: images / "
        "features only |",
        "|---|---|---:|---:|---|---|",
    ]
    for row in read_rows(path):
        diff = interval_cell(row["features_only_minus_images"])
        images, features = (row["file_bytes"][k] / 1e6 for k in ("images", "features_only"))
        auc = row["roc_auc"]
        lines.append(
            f"| {row['model']} | {row['score']} | {100 * auc['images']:.1f} | "
            f"{100 * auc['features_only']:.1f} | {diff} | {images:.1f} / {features:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", nargs="?", choices=("class", "folder"))
    parser.add_argument("what", nargs="?", help="a class source, or a folder")
    parser.add_argument("size", type=int, nargs="?")
    results_main(
        parser,
        lambda args: (
            class_rows(args.what) if args.kind == "class" else folder_rows(args.what, args.size)
        ),
        table,
    )


if __name__ == "__main__":
    main()
