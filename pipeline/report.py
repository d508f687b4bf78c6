"""DVC stage `benchmark_report`: every class of the one-class benchmark in one report.

Writes reports/anomaly.md (our ROC-AUC per class and score beside published results, each with
its source and protocol), reports/anomaly_roc.png and the aggregate metrics (mean over classes).

Every MLflow call of the benchmark happens here, in one process (importing MLflow and opening its
store costs about 2 s per process): a parent run per benchmark (same params and data) holding the
summary, and a nested run per class, continued when that class's results change and left alone
when they do not. Registers each class's model when benchmark.register_models is true.
"""

import dataclasses
import functools
import hashlib
import json
import os

import numpy as np
import torch

from convvae.anomaly import COMPRESSOR, SCORES, THRESHOLD_TAG
from convvae.cli import run_stage
from convvae.config import Params, TrackingConfig, load_params
from convvae.data import load_splits
from convvae.errors import DataError
from convvae.files import atomic_path, write_json
from convvae.model import load_model
from convvae.tracking import (
    Tracker,
    anomaly_model_name,
    benchmark_parent_run,
    child_runs,
    flatten,
    nested_run,
    open_tracker,
    provenance_tags,
)
from convvae.train import to_unit_interval
from pipeline import layout

SCORE_TITLES = {
    "recon_bce": "reconstruction BCE",
    "neg_elbo": "negative ELBO",
    "iwae_nll": "IWAE NLL",
    "excess_nll": "IWAE NLL above its floor",
    "complexity": "complexity-corrected (Serrà et al.)",
}
# ROC-AUC in %, class 0..9, from ../shared/notes/anomaly-literature.md. "quoted": read in a
# later paper's table (named); none of these was checked against the original paper here.
PUBLISHED = {
    "mnist": [
        (
            "One-class Deep SVDD (Ruff et al., ICML 2018), 10 seeds",
            [98.0, 99.7, 91.7, 91.9, 94.9, 88.5, 98.3, 94.6, 93.9, 96.5],
            94.8,
            "quoted: a reimplementation's README row 'original'; official split, "
            "GCN + min-max preprocessing",
        ),
        (
            "AnoGAN, as run by Cheng et al. 2020",
            [99.0, 99.8, 88.8, 91.3, 94.4, 91.2, 92.5, 96.4, 88.3, 95.8],
            93.7,
            "quoted: AGAD, Table 1; official split",
        ),
        (
            "GEOM (Golan & El-Yaniv 2018), as run by Cheng et al. 2020",
            [98.2, 91.6, 99.4, 99.0, 99.1, 99.6, 99.9, 96.3, 97.2, 99.2],
            98.0,
            "quoted: AGAD, Table 1; official split",
        ),
        (
            "OCGAN (Perera et al., CVPR 2019)",
            [99.8, 99.9, 94.2, 96.3, 97.5, 98.0, 99.1, 98.1, 93.9, 98.1],
            97.5,
            "quoted: AGAD, Table 1; official train/test split",
        ),
        (
            "ARNet (Ye et al., TMM 2022)",
            [98.6, 99.9, 99.0, 99.1, 98.1, 98.1, 99.7, 99.0, 93.6, 97.8],
            98.3,
            "quoted: AGAD, Table 1; official split",
        ),
        (
            "OC-SVM on CAE features (Deep SAD, Ruff et al., ICLR 2020)",
            None,
            "96.3 ± 2.5",
            "quoted: AGAD, Table 2; mean only",
        ),
    ],
    "fashion-mnist": [
        (
            "GEOM with Dirichlet scoring (Golan & El-Yaniv, NeurIPS 2018)",
            [99.4, 97.6, 91.1, 89.9, 92.1, 93.4, 83.3, 98.9, 90.8, 99.2],
            93.5,
            "quoted: AGAD, Table 1; official split",
        ),
        (
            "ARNet (Ye et al., TMM 2022)",
            [92.7, 99.3, 89.1, 93.6, 90.8, 93.1, 85.0, 98.4, 97.8, 98.4],
            93.9,
            "quoted: AGAD, Table 1; official split",
        ),
        (
            "OC-SVM on CAE features (Deep SAD paper)",
            None,
            "91.2 ± 4.7",
            "quoted: AGAD, Table 2; mean only",
        ),
        (
            "Deep SAD without labelled anomalies (≈ Deep SVDD)",
            None,
            "89.2 ± 6.2",
            "quoted: AGAD, Table 2; mean only",
        ),
    ],
}
PUBLISHED["mnist-5k"] = PUBLISHED["mnist"]
METRIC_KEYS = ("roc_auc", "average_precision", "fpr_at_95_tpr", "f1")


def main() -> None:
    params = load_params(layout.PARAMS)
    classes = params.benchmark.classes
    per_class = {}
    for normal_class in classes:
        path = layout.BENCHMARK_METRICS / f"class_{normal_class}.json"
        if not path.is_file():
            raise DataError(f"{path}: not found; run the benchmark stages (dvc repro benchmark)")
        per_class[normal_class] = json.loads(path.read_text())
    summary = {
        "data_source": params.data.source,
        "classes": len(classes),
        "seeds": params.benchmark.seeds,
        **{
            f"{score}.{key}_mean": float(
                np.mean([m["scores"][score][key] for m in per_class.values()])
            )
            for score in SCORES
            for key in METRIC_KEYS
        },
    }
    save_roc_figure(classes, params.benchmark.score, per_class)
    with atomic_path(layout.ANOMALY_REPORT) as tmp:
        tmp.write_text(render_report(params, per_class, summary))
    tracker = open_tracker(benchmark_tracking(params))
    if tracker is not None:
        summary.update(log_benchmark(tracker, params, per_class, summary))
    write_json(summary, layout.BENCHMARK_SUMMARY)
    means = ", ".join(f"{s} {summary[f'{s}.roc_auc_mean']:.3f}" for s in SCORES)
    print(f"mean ROC-AUC over {len(classes)} classes: {means}; report in {layout.ANOMALY_REPORT}")


def benchmark_key(params: Params, data_sha256: str) -> str:
    """Identifies one benchmark (params and data, not which classes ran): its parent MLflow run."""
    bench = dataclasses.asdict(params.benchmark)
    del bench["classes"], bench["register_models"]
    identity = {
        "benchmark": bench,
        "model": dataclasses.asdict(params.model),
        "data": dataclasses.asdict(params.data),
        "data_sha256": data_sha256,
        "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def benchmark_tracking(params: Params) -> TrackingConfig:
    """The tracking section with experiment ``<tracking.experiment>-anomaly``: the benchmark's
    runs (a parent and one per class) stay out of the table of training runs."""
    return dataclasses.replace(params.tracking, experiment=f"{params.tracking.experiment}-anomaly")


CLASS_DIGEST_TAG = "benchmark.class_sha256"  # of the class's metrics and threshold files
REGISTERED_TAG = "registered_version"
REGISTERED_DIGEST_TAG = "registered.class_sha256"  # the results that version was registered with


def log_benchmark(tracker: Tracker, params: Params, per_class: dict, summary: dict) -> dict:
    """The parent run with the summary and report, a nested run per class; returns their ids."""
    data_sha256 = hashlib.sha256(layout.PREPARED_SPLITS.read_bytes()).hexdigest()
    tags = {**provenance_tags(tracker.root), "data.source": params.data.source}
    key = benchmark_key(params, data_sha256)
    parent = benchmark_parent_run(tracker, key, f"benchmark-{params.data.source}", tags)
    logged = {}
    for run in reversed(child_runs(tracker, parent)):  # oldest first: the newest one wins
        logged[run.data.tags.get("normal_class")] = run
    run_ids = {
        str(normal_class): log_class(
            tracker, params, parent, metrics, logged.get(str(normal_class)), tags, data_sha256
        )
        for normal_class, metrics in per_class.items()
    }
    with tracker.run(run_id=parent):
        tracker.log_metrics(summary)
        tracker.log_artifacts([layout.ANOMALY_REPORT, layout.ANOMALY_ROC_PNG], "benchmark")
    print(f"logged the benchmark summary to MLflow run {parent}")
    return {"mlflow_parent_run_id": parent, "mlflow_run_ids": run_ids}


def log_class(tracker, params, parent, metrics, previous, tags, data_sha256) -> str:
    """One class's nested run: new, continued (its results changed, or the last logging or
    registration did not finish) or untouched; returns its id."""
    normal_class = metrics["normal_class"]
    model_dir = layout.ANOMALY_MODELS / f"class_{normal_class}"
    threshold_file = model_dir / layout.THRESHOLD_FILE
    metrics_file = layout.BENCHMARK_METRICS / f"class_{normal_class}.json"
    digest = hashlib.sha256(metrics_file.read_bytes() + threshold_file.read_bytes()).hexdigest()
    register = params.benchmark.register_models
    old_tags = previous.data.tags if previous is not None else {}
    # The digest tags are set last, so a run whose logging failed half-way is logged again.
    logged = (
        previous is not None
        and previous.info.status == "FINISHED"
        and old_tags.get(CLASS_DIGEST_TAG) == digest
    )
    registered = old_tags.get(REGISTERED_DIGEST_TAG) == digest
    if logged and (registered or not register):
        return previous.info.run_id
    previous_id = previous.info.run_id if previous is not None else None
    with nested_run(tracker, parent, f"class-{normal_class}", previous_id) as run_id:
        if previous is None:
            bench = dataclasses.asdict(params.benchmark)
            del bench["classes"], bench["register_models"]  # not part of the benchmark's identity
            tracker.log_params({"benchmark": bench, "model": params.to_dict()["model"]})
        if not logged:
            tracker.set_tags(
                {**tags, "normal_class": str(normal_class), "data.sha256": data_sha256}
            )
            tracker.log_metrics(
                {
                    **{k: v for k, v in metrics.items() if k != "scores"},
                    **flatten(metrics["scores"]),  # <score>.<metric>
                }
            )
            roc_path = layout.BENCHMARK_PLOTS / f"roc_class_{normal_class}.json"
            tracker.log_artifacts([threshold_file, roc_path], "benchmark")
        if register and not registered:
            version = register_class_model(tracker, params, normal_class, run_id)
            tracker.set_tags({REGISTERED_TAG: version, REGISTERED_DIGEST_TAG: digest})
        tracker.set_tags({CLASS_DIGEST_TAG: digest})
    action = "continued" if previous is not None else "logged"
    print(f"class {normal_class}: {action} MLflow run {run_id}")
    return run_id


@functools.cache
def example_images() -> np.ndarray:
    """Two test images in [0, 1], the input example of every registered class model (the
    splits file is read once per report, not once per class)."""
    splits = load_splits(layout.PREPARED_SPLITS)
    return to_unit_interval(torch.from_numpy(splits.test.images[:2])).numpy()


def register_class_model(tracker: Tracker, params: Params, normal_class: int, run_id: str) -> str:
    """The class's model as a version of convvae-anomaly-<source>-class-<c>, with its threshold."""
    model_dir = layout.ANOMALY_MODELS / f"class_{normal_class}"
    name = anomaly_model_name(params.data.source, normal_class)
    threshold = (model_dir / layout.THRESHOLD_FILE).read_text()
    version = tracker.log_model(
        load_model(model_dir / "model.pt"),
        model_dir / "model.pt",
        example_images(),
        name,
        {THRESHOLD_TAG: threshold, "run_id": run_id},
    )
    print(f"registered {name} version {version}")
    return version


def render_report(params: Params, per_class: dict[int, dict], summary: dict) -> str:
    """The Markdown report: protocol, our table, published tables, per-class details."""
    source = params.data.source
    classes = list(per_class)
    first = next(iter(per_class.values()))
    train_counts = sorted({m["train_images"] for m in per_class.values()})
    header = "| score | " + " | ".join(str(c) for c in classes) + " | mean |"
    rule = "|---" * (len(classes) + 2) + "|"
    lines = [
        f"# One-class anomaly benchmark: {source}",
        "",
        "Generated by `dvc repro benchmark_report` (pipeline/report.py); do not edit by hand.",
        "",
        "## Protocol",
        "",
        "For each normal class c: a ConvVAE is trained on the training images of class c only, "
        "then scores every test image; class c is normal, all other classes anomalous. "
        f"{first['seeds']} seed(s) per class; metrics are the mean over seeds. Training images "
        f"per class: {', '.join(map(str, train_counts))} (the training split less the "
        f"{params.data.val_fraction:.0%} held out as validation images, for early stopping and "
        f"the threshold); test images: {first['test_images']} "
        f"({first['test_images'] - first['test_anomalous']} of them normal for class "
        f"{first['normal_class']}). The threshold is the "
        f"{params.benchmark.threshold_quantile:.0%} quantile of the normal class's validation "
        "scores (no test labels); F1 is measured on the test set at that threshold.",
        "",
        "Scores (higher = more anomalous): reconstruction BCE of the posterior-mean "
        "reconstruction (nats); negative ELBO and the IWAE bound on -log p(x) with "
        f"{params.benchmark.iwae_samples} importance samples (nats); two input-complexity "
        'corrections after Serrà et al., ICLR 2020 ("Input complexity and out-of-distribution '
        'detection with likelihood-based generative models"), S(x) = -log p(x) - L(x): '
        "*IWAE NLL above its floor*, with L(x) = sum_i H(x_i), the binary entropy of each "
        "pixel's grey level, the least -log p(x) any Bernoulli decoder can give this image "
        "(same units, nats; without it a likelihood on grey levels mostly counts grey pixels); "
        f"and the paper's own form in bits, with L(x) the length of the lossless {COMPRESSOR} "
        "code. Our likelihood is Bernoulli on grey levels in [0, 1], not a probability of the "
        "256-level image, so in the second form -log2 p(x) and L(x) are not on the same scale "
        "and S(x) is dominated by -L(x).",
        "",
    ]
    if source == "mnist-5k":
        lines += [
            "**Different protocol from the published rows below.** `mnist-5k` is a 5,000-digit "
            "subset of MNIST (500 per class) split 70/10/20 here: "
            f"{', '.join(map(str, train_counts))} training images per class and a "
            f"{first['test_images']}-image test set, where the published results train on about "
            "6,000 images per class and score the official 10,000-image test set (1,000 per "
            "class). The comparison shows the order of magnitude, not a ranking.",
            "",
        ]
    if params.data.max_train_images is not None:
        lines += [
            f"**Capped data** (`data.max_train_images: {params.data.max_train_images}`): a smoke "
            "run, not comparable with any published figure.",
            "",
        ]
    lines += ["## ROC-AUC (%), ours", "", header, rule]
    for score in SCORES:
        values = [100 * per_class[c]["scores"][score]["roc_auc"] for c in classes]
        cells = " | ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {SCORE_TITLES[score]} | {cells} | {np.mean(values):.1f} |")
    lines += [
        "",
        "95% bootstrap intervals (test images resampled within normal and anomalous, "
        f"{params.benchmark.bootstrap_resamples} resamples), ROC-AUC %:",
        "",
        header,
        rule,
    ]
    for score in SCORES:
        cells = " | ".join(
            f"{100 * m['roc_auc_ci_low']:.1f}–{100 * m['roc_auc_ci_high']:.1f}"
            for m in (per_class[c]["scores"][score] for c in classes)
        )
        lines.append(f"| {SCORE_TITLES[score]} | {cells} | |")
    published = PUBLISHED.get(source, [])
    if published:
        columns = " | ".join(map(str, range(10)))
        pub_header = f"| method | {columns} | mean | source, protocol |"
        lines += ["", "## Published ROC-AUC (%), standard one-class protocol", ""]
        lines += [pub_header, "|---" * 13 + "|"]
        for method, values, mean, where in published:
            cells = " | ".join(f"{v:.1f}" for v in values) if values else " | ".join([""] * 10)
            mean_cell = f"{mean:.1f}" if isinstance(mean, float) else mean
            lines.append(f"| {method} | {cells} | {mean_cell} | {where} |")
        lines += [
            "",
            "All rows are quoted from later papers' tables (AGAD = Cheng et al. 2020, "
            "Adversarial Generative Anomaly Detection), not checked against the original "
            "papers. Baselines are sensitive to preprocessing (a rerun of Isolation Forest got "
            "0.93 on MNIST class 0 where Deep SVDD's paper says 0.98, lukasruff/Deep-SVDD#14).",
        ]
    primary = params.benchmark.score
    lines += [
        "",
        f"## Per class, score `{primary}` (the one `convvae score` uses)",
        "",
        "| class | ROC-AUC (95% CI) | PR-AUC | FPR at 95% TPR | threshold | F1 | train images |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, metrics in per_class.items():
        m = metrics["scores"][primary]
        lines.append(
            f"| {c} ({metrics['class_name']}) | {m['roc_auc']:.3f} ({m['roc_auc_ci_low']:.3f}–"
            f"{m['roc_auc_ci_high']:.3f}) | {m['average_precision']:.3f} | "
            f"{m['fpr_at_95_tpr']:.3f} | {m['threshold']:.2f} | {m['f1']:.3f} | "
            f"{metrics['train_images']} |"
        )
    lines += [
        f"| mean | {summary[f'{primary}.roc_auc_mean']:.3f} | "
        f"{summary[f'{primary}.average_precision_mean']:.3f} | "
        f"{summary[f'{primary}.fpr_at_95_tpr_mean']:.3f} | | {summary[f'{primary}.f1_mean']:.3f} "
        "| |",
        "",
        f"![ROC curves per normal class, score {primary}]({layout.ANOMALY_ROC_PNG.name})",
        "",
    ]
    return "\n".join(lines)


def save_roc_figure(classes: list[int], score: str, per_class: dict[int, dict]) -> None:
    """One ROC curve per normal class (seed 0, ``score``), read from the stages' plot files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for c in classes:
        rows = json.loads((layout.BENCHMARK_PLOTS / f"roc_class_{c}.json").read_text())
        auc = per_class[c]["scores"][score]["roc_auc"]
        ax.plot([r["fpr"] for r in rows], [r["tpr"] for r in rows], label=f"{c}: {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (normal flagged)")
    ax.set_ylabel("true positive rate (anomalies flagged)")
    ax.set_title(f"One-class ROC per normal class, score {score}")
    ax.legend(title="normal class: ROC-AUC", fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(layout.ANOMALY_ROC_PNG) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


if __name__ == "__main__":
    run_stage(main)
