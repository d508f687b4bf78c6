"""DVC stage `benchmark@<c>`: the one-class protocol for one normal class c.

Runs `convvae.benchmark.oneclass.run_class` and writes the class's metrics, ROC curve, the model of
seed 0
and its threshold. Imports no MLflow: the report stage logs every class in one process.

    python -m pipeline.benchmark --normal-class 3
"""

import argparse

from convvae.benchmark.oneclass import NO_CLASSES, run_class, write_skipped_class
from convvae.config import load_params
from convvae.data.splits import load_splits, read_manifest
from convvae.errors import run_stage
from pipeline import layout


def main(normal_class: int) -> None:
    params = load_params(layout.PARAMS)
    if params.data.source == "folder":
        write_skipped_class(layout.class_files(normal_class))
        print(f"benchmark class {normal_class}: skipped, {NO_CLASSES}")
        return
    splits = load_splits(layout.PREPARED_SPLITS)
    class_name = read_manifest(layout.MANIFEST)["class_names"][normal_class]
    result = run_class(params, splits, normal_class, class_name)
    result.save(layout.class_files(normal_class))
    summary = ", ".join(
        f"{name} {m['roc_auc']:.3f}" for name, m in result.metrics["scores"].items()
    )
    print(f"class {normal_class} ROC-AUC: {summary}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--normal-class", type=int, required=True, help="0..9")
    args = parser.parse_args()
    run_stage(lambda: main(args.normal_class))
