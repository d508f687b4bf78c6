"""What the folder benchmark scripts share: one pipeline run on a folder, table cells, and the
command line of the scripts that write JSON-lines results (``results_main``)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


# The image-level peers and ablations every folder table shows beside ours.
IMAGE_PEERS = [
    ("PyOD KNN", "pyod_knn.image_roc_auc"),
    ("PyOD IForest", "pyod_iforest.image_roc_auc"),
    ("per-pixel Gaussian", "gaussian_zscore.image_roc_auc"),
    ("raw-pixel patch kNN", "pixel_patch_knn.image_roc_auc"),
    ("untrained network", "untrained_encoder.image_roc_auc"),
]


def evaluate_folder(project: Path, folder: Path, samples: int, **data) -> dict:
    """`dvc repro evaluate` in ``project`` (a copy of the repository: tests/e2e/project.py's
    make_project) on ``folder`` with every default of a folder source, but 30 epochs at most,
    ``samples`` importance samples, no tracking and the ``data`` keys given: the run's
    metrics/defects.json with its seconds, epochs and default score, and the synthetic-anomaly
    check of metrics/evaluate.json (``synthetic_anomaly_roc_auc.<key>``)."""
    from convvae.config import load_params
    from tests.e2e.project import BIN, run

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(source="folder", path=str(folder), max_train_images=None, **data)
    params["train"]["epochs"] = 30
    params["evaluate"].update(iwae_samples=64, grid_images=64)
    params["anomaly"]["samples"] = samples
    params["tracking"]["enabled"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    run([str(BIN / "dvc"), "repro", "evaluate"], project, {"OMP_NUM_THREADS": "2"})
    seconds = time.perf_counter() - started
    metrics = json.loads((project / "metrics/defects.json").read_text())
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    check = evaluation.get("synthetic_anomaly_roc_auc", {})  # the label-free check
    metrics |= {f"synthetic_anomaly_roc_auc.{key}": value for key, value in check.items()}
    train = json.loads((project / "metrics/train.json").read_text())
    default = load_params(project / "params.yaml").anomaly.score
    return {"seconds": seconds, "epochs": train["epochs_run"], "default_score": default, **metrics}


def synthetic_cell(row: dict) -> str:
    """The label-free check's ROC-AUC ×100 with its interval, flagged where below chance."""
    if "synthetic_anomaly_roc_auc.all" not in row:
        return "–"
    value = row["synthetic_anomaly_roc_auc.all"]
    low, high = row["synthetic_anomaly_roc_auc.ci_low"], row["synthetic_anomaly_roc_auc.ci_high"]
    flag = " (warned: below chance)" if value < 0.5 else ""
    return f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]{flag}"


def margin_cell(row: dict) -> str:
    """The default's image ROC-AUC minus the best VAE-free method's, ×100, with its interval."""
    low, high = row["margin_over_vae_free.ci_low"], row["margin_over_vae_free.ci_high"]
    return (
        f"{100 * row['margin_over_vae_free.image_roc_auc']:+.1f} "
        f"[{100 * low:+.1f}, {100 * high:+.1f}] vs {row['vae_free_best']}"
    )


def interval_cell(difference: list[float]) -> str:
    """A stored [difference, low, high] of ROC-AUCs, ×100: "+1.2 [+0.3, +2.0]"."""
    return "{:+.1f} [{:+.1f}, {:+.1f}]".format(*(100 * value for value in difference))


def auc_cell(found: dict) -> str:
    """Image ROC-AUC ×100, with the pixel one in brackets where there is one: "97.7 (93.2)"."""
    pixel = f" ({100 * found['pixel_roc_auc']:.1f})" if "pixel_roc_auc" in found else ""
    return f"{100 * found['image_roc_auc']:.1f}{pixel}"


def scored_methods(test, scores: dict, maps: dict, methods, differences) -> dict:
    """{"methods": each method's image ROC-AUC on ``test`` (a LabelledImages), and its pixel
    ROC-AUC where it has a map and masks say where; "differences": each (ours, other) pair's
    image ROC-AUC difference with its paired bootstrap interval, [difference, low, high]}."""
    from sklearn.metrics import roc_auc_score

    from convvae.metrics.pixel import pixel_roc_auc
    from convvae.metrics.stats import roc_auc_difference

    labels = (test.labels != 0).astype(int)
    known = test.mask_known if test.masks is not None else None
    found = {"methods": {}, "differences": {}}
    for method in methods:
        row = {"image_roc_auc": float(roc_auc_score(labels, scores[method]))}
        if method in maps and known is not None and (known & (labels > 0)).any():
            row["pixel_roc_auc"] = pixel_roc_auc(maps[method][known], test.masks[known])
        found["methods"][method] = row
    for ours, other in differences:
        diff = roc_auc_difference(labels, scores[ours], scores[other])
        found["differences"][f"{ours} - {other}"] = [diff.difference, diff.ci_low, diff.ci_high]
    return found


def folder_parser() -> argparse.ArgumentParser:
    """The command line of a script run on one folder at one image size."""
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", nargs="?")
    parser.add_argument("size", type=int, nargs="?")
    return parser


def read_rows(path: str | Path) -> list[dict]:
    """Every result of a JSON-lines file."""
    with open(path) as results:
        return [json.loads(line) for line in results]


def results_main(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Iterable[dict]],
    table: Callable[[str], str],
) -> None:
    """A results script's command line: ``--table F`` prints F's table and runs nothing;
    otherwise each result of ``run`` is printed as it comes and, with ``--out F``, appended to
    F as one JSON line."""
    parser.add_argument("--out", help="append each result to this JSON-lines file")
    parser.add_argument("--table", help="print the table of this results file, run nothing")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    for row in run(args):
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as out:
                out.write(json.dumps(row) + "\n")
