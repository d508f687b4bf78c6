"""The one-class benchmark report: summary metrics, Markdown and the ROC figure.

Rendering only: the caller reads the per-class metrics (one dict per normal class, as the
benchmark stage writes them), logs to MLflow and decides where files go. The published results
the report quotes: ``convvae.benchmark.published``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convvae.anomaly.thresholds import fpr_spread
from convvae.benchmark.published import published_section
from convvae.metrics.stats import clopper_pearson

SCORE_TITLES = {
    "recon_mse": "reconstruction MSE",
    "recon_nll_at_mean": "reconstruction NLL at the posterior mean",
    "neg_elbo": "negative ELBO",
    "iwae_nll": "IWAE NLL",
    "excess_nll": "deviance (IWAE NLL above the likelihood's floor)",
    "hidden_knn": "5th-neighbour distance, encoder features",
    "cosine_knn": "5th-neighbour distance, unit-length pixels",
    "contrast_knn": "5th-neighbour distance, contrast statistics",
    "fused": "fused: deviance + three distances, z-scored",
}
PEER_TITLES = {
    "pyod_knn": "PyOD KNN (5th-neighbour distance, pixels)",
    "pyod_iforest": "PyOD IForest (pixels)",
    "pyod_autoencoder": "PyOD AutoEncoder (pixels)",
    "pyod_vae": "PyOD VAE (pixels)",
}
ABLATION_TITLES = {
    "untrained_encoder": "ablation: the default score by the untrained network",
}
METHOD_TITLES = {**SCORE_TITLES, **PEER_TITLES, **ABLATION_TITLES}
# The metrics of each score averaged over classes in the summary.
METRIC_KEYS = (
    "roc_auc",
    "average_precision",
    "average_precision_in",
    "normal_flagged_at_95_recall",
    "anomalies_passed_at_95_normal",
    "f1",
    "realised_fpr",
)


def class_methods(metrics: dict) -> dict[str, dict]:
    """One class's detection metrics by method: our scores in SCORE_TITLES' order, then the
    peers and the ablations run beside them in PEER_TITLES' and ABLATION_TITLES' order (the
    metrics files are key-sorted)."""
    methods = {**metrics["scores"], **metrics.get("peers", {}), **metrics.get("ablations", {})}
    order = list(METHOD_TITLES)
    ranked = sorted(methods, key=lambda m: order.index(m) if m in order else len(order))
    return {method: methods[method] for method in ranked}


def summarize(per_class: dict[int, dict], data_source: str, seeds: int, default_score: str) -> dict:
    """The benchmark's flat summary: ``<method>.<metric>_mean`` for each metric of METRIC_KEYS
    and ``<method>.seconds_per_class`` (train or fit + score, all seeds), averaged over the
    normal classes of ``per_class`` (normal class -> its metrics dict), for our scores and each
    peer; ``default_score`` names the score `convvae score` uses."""
    by_class = [class_methods(metrics) for metrics in per_class.values()]
    summary = {
        "data_source": data_source,
        "classes": len(per_class),
        "seeds": seeds,
        "default_score": default_score,
    }
    for method in by_class[0]:
        for key in (*METRIC_KEYS, "seconds"):
            if key in by_class[0][method]:
                name = "seconds_per_class" if key == "seconds" else f"{key}_mean"
                summary[f"{method}.{name}"] = float(np.mean([m[method][key] for m in by_class]))
    return summary


@dataclass(frozen=True)
class ReportContext:
    """What the report says about how the benchmark ran (from params), as plain values."""

    data_source: str
    val_fraction: float  # share of the training split held out as validation images
    target_fpr: float  # the threshold's target false-positive rate (conformal, calibration half)
    iwae_samples: int
    bootstrap_resamples: int
    max_train_images: int | None  # None: the whole training split
    primary_score: str  # the score `convvae score` uses
    scores: tuple[str, ...]  # every score, in table order
    roc_figure_name: str  # the ROC figure's file name, beside the report
    methods_figure_name: str = "anomaly_methods.png"  # the bar plot of every method's mean


def render_report(context: ReportContext, per_class: dict[int, dict], summary: dict) -> str:
    """The Markdown report: protocol, our ROC-AUC tables, published results, per-class details.

    ``per_class`` maps each normal class to its metrics dict (in table order); ``summary`` is
    what :func:`summarize` returns for them.
    """
    lines = [
        *_protocol_section(context, per_class),
        *_caveats(context, per_class),
        *_roc_auc_table(context, per_class),
        *_bootstrap_table(context, per_class),
        *_difference_table(context, per_class, summary),
        *_false_positive_table(context, per_class),
        *_seed_table(per_class),
        *published_section(context.data_source),
        *_per_class_table(context, per_class, summary),
    ]
    return "\n".join(lines)


def _training_counts(per_class: dict[int, dict]) -> str:
    """The distinct numbers of training images per class, e.g. "350" or "5400, 5421"."""
    return ", ".join(map(str, sorted({metrics["train_images"] for metrics in per_class.values()})))


def _protocol_section(context: ReportContext, per_class: dict[int, dict]) -> list[str]:
    """Title, how each class was trained and tested, and what each score measures."""
    first = next(iter(per_class.values()))
    test_normal = first["test_images"] - first["test_anomalous"]
    return [
        f"# One-class anomaly benchmark: {context.data_source}",
        "",
        "Generated by `dvc repro benchmark_report` (pipeline/report.py); do not edit by hand.",
        "",
        "## Protocol",
        "",
        "For each normal class c: a ConvVAE is trained on the training images of class c only, "
        "then scores every test image; class c is normal, all other classes anomalous. "
        f"{first['seeds']} seed(s) per class; metrics are the mean over seeds. Training images "
        f"per class: {_training_counts(per_class)} (the training split less the "
        f"{context.val_fraction:.0%} held out as validation images: half of them choose the "
        "epoch (early stopping), the other half only calibrate the threshold); test images: "
        f"{first['test_images']} ({test_normal} of them normal for class "
        f"{first['normal_class']}). The threshold is the conformal quantile of the calibration "
        f"images' scores for a target false-positive rate of {context.target_fpr:.0%} (no test "
        "images or labels); F1 and the realised false-positive rate are measured on the test "
        "set at that threshold.",
        "",
        "Scores (higher = more anomalous), all from one pass with "
        f"{context.iwae_samples} importance samples: the squared error and the negative "
        "log-likelihood of the reconstruction decoded from the posterior mean (the plain "
        "reconstruction-error baselines); the negative ELBO and the IWAE bound on -log p(x) "
        "(nats); and the *deviance*, the IWAE NLL minus the least -log p(x) any decoder of the "
        "likelihood's family can give the image (for Bernoulli, sum_i H(x_i), the binary "
        "entropy of each pixel's grey level: a Bernoulli likelihood on grey levels is not a "
        "probability of the 8-bit image, and without that floor its NLL mostly counts grey "
        "pixels). Three distances to the 5th nearest normal training image: in the encoder's "
        "last hidden layer, between unit-length pixel vectors, and in two contrast statistics "
        "(pixel spread and edge strength: flat frames sit far below every normal image). The "
        "default, *fused*, is the mean of the deviance and the three distances, each "
        "standardised on the half of the validation images that chose the epoch (never on test "
        "images); it was chosen on held-out training images of Fashion-MNIST and mnist-5k "
        "(the contrast part on validation images and generated degenerate frames, "
        "docs/benchmark/degenerate-selection), not on test results.",
        "",
        "Peers: PyOD's KNN, IForest, AutoEncoder and VAE with their default settings, fitted "
        "on the same normal training images (flattened pixels in [0, 1]) and scoring the same "
        "test images in the same run; their thresholds are set the same way.",
        "",
    ]


def _caveats(context: ReportContext, per_class: dict[int, dict]) -> list[str]:
    """Warnings that our figures are not comparable with the published ones, when they are not."""
    lines = []
    if context.data_source == "mnist-5k":
        test_images = next(iter(per_class.values()))["test_images"]
        lines += [
            "**Different protocol from the published rows below.** `mnist-5k` is a 5,000-digit "
            "subset of MNIST (500 per class) split 70/10/20 here: "
            f"{_training_counts(per_class)} training images per class and a "
            f"{test_images}-image test set, where the published results train on about "
            "6,000 images per class and score the official 10,000-image test set (1,000 per "
            "class). The comparison shows the order of magnitude, not a ranking.",
            "",
        ]
    if context.max_train_images is not None:
        lines += [
            f"**Capped data** (`data.max_train_images: {context.max_train_images}`): a smoke "
            "run, not comparable with any published figure.",
            "",
        ]
    return lines


def _class_table_head(per_class: dict[int, dict], extra: str = "") -> list[str]:
    """Header and rule of a table with a method column, one column per class and a mean."""
    classes = " | ".join(str(normal_class) for normal_class in per_class)
    columns = len(per_class) + 2 + (1 if extra else 0)
    return [f"| method | {classes} | mean |{extra}", "|---" * columns + "|"]


def _roc_auc_table(context: ReportContext, per_class: dict[int, dict]) -> list[str]:
    """ROC-AUC (%) per method and class, ours and the peers run beside them on the same
    images, with the mean over classes and the seconds per class (train + score, all seeds)."""
    lines = [
        "## ROC-AUC (%), every method on the same images",
        "",
        "Ours (ConvVAE scores, **bold**: the default) and the peers, run here side by side on "
        "the same splits in the same run; seconds per class are wall-clock on this machine.",
        "",
        *_class_table_head(per_class, " s/class |"),
    ]
    by_class = [class_methods(metrics) for metrics in per_class.values()]
    for method in by_class[0]:
        values = [100 * methods[method]["roc_auc"] for methods in by_class]
        timed = [methods[method]["seconds"] for methods in by_class if "seconds" in methods[method]]
        seconds = f"{np.mean(timed):.1f}" if timed else ""
        cells = " | ".join(f"{value:.1f}" for value in values)
        title = METHOD_TITLES.get(method, method)
        if method == context.primary_score:
            title = f"**{title}**"
        lines.append(f"| {title} | {cells} | {np.mean(values):.1f} | {seconds} |")
    if "peers" in next(iter(per_class.values())):
        lines += ["", f"![Mean ROC-AUC per method]({context.methods_figure_name})"]
    return lines


def _bootstrap_table(context: ReportContext, per_class: dict[int, dict]) -> list[str]:
    """The 95% bootstrap interval of each ROC-AUC (%); no mean, as intervals do not average."""
    lines = [
        "",
        "95% bootstrap intervals (test images resampled within normal and anomalous, "
        f"{context.bootstrap_resamples} resamples), ROC-AUC %:",
        "",
        *_class_table_head(per_class),
    ]
    by_class = [class_methods(metrics) for metrics in per_class.values()]
    for method in by_class[0]:
        cells = " | ".join(
            f"{100 * m['roc_auc_ci_low']:.1f}–{100 * m['roc_auc_ci_high']:.1f}"
            for m in (methods[method] for methods in by_class)
        )
        lines.append(f"| {METHOD_TITLES.get(method, method)} | {cells} | |")
    return lines


def _difference_table(
    context: ReportContext, per_class: dict[int, dict], summary: dict
) -> list[str]:
    """Our default's ROC-AUC minus every other method's (points of %), per class and the mean
    over classes, with paired 95% bootstrap intervals; * where the interval excludes 0."""
    default = context.primary_score
    first = next(iter(per_class.values()))
    if first.get("default_score") != default:  # measured from another score, or not at all
        return []
    lines = [
        "",
        f"Our default ({default}) minus each method, ROC-AUC points: paired bootstrap (both "
        "scored on the same resamples of the test images); the mean over classes averages the "
        "classes' paired resamples. `*`: the 95% interval excludes 0, a difference beyond "
        "resampling noise of the test images (not of training: see the seed table).",
        "",
        *_class_table_head(per_class, " 95% interval of the mean |"),
    ]
    for method in (m for m in class_methods(first) if m in first["differences"]):
        cells = []
        for metrics in per_class.values():
            found = metrics["differences"][method]
            beyond = found["ci_low"] > 0 or found["ci_high"] < 0
            cells.append(f"{100 * found['difference']:+.1f}{'*' if beyond else ''}")
        mean = summary[f"diff.{method}.roc_auc_mean"]
        low, high = summary[f"diff.{method}.ci_low"], summary[f"diff.{method}.ci_high"]
        star = "*" if low > 0 or high < 0 else ""
        lines.append(
            f"| {METHOD_TITLES.get(method, method)} | {' | '.join(cells)} | "
            f"{100 * mean:+.1f}{star} | {100 * low:+.1f} to {100 * high:+.1f} |"
        )
    return lines + _margin_line(summary)


def _margin_line(summary: dict) -> list[str]:
    """Whether the trained VAE is why the default works: its margin over the best method that
    needs none (``margin_over_vae_free``), or nothing where no such method ran."""
    if "vae_free_best" not in summary:
        return []
    best = summary["vae_free_best"]
    keys = ("roc_auc_mean", "ci_low", "ci_high")
    mean, low, high = (100 * summary[f"margin_over_vae_free.{key}"] for key in keys)
    side = "above" if low > 0 else "below" if high < 0 else ""
    verdict = f"{side} it beyond resampling noise" if side else "not apart from it"
    return [
        "",
        f"Margin over the best method that needs no trained VAE ({METHOD_TITLES.get(best, best)}"
        f"): {mean:+.1f} points [{low:+.1f}, {high:+.1f}], {verdict}.",
    ]


def _false_positive_table(context: ReportContext, per_class: dict[int, dict]) -> list[str]:
    """The default threshold's realised false-positive rate per class, with its exact binomial
    interval over the normal test images, beside the range a threshold set on that many
    calibration images has over calibration sets: the guarantee is on average, not per class."""
    first = next(iter(per_class.values()))
    if "calibration" not in first:  # class results written before calibration was recorded
        return []
    default = context.primary_score
    lines = [
        "",
        f"False-positive rate of the {default} threshold on each class's normal test images "
        f"(target {context.target_fpr:.0%}), %: as measured with its exact 95% binomial "
        "interval, and the range (5th-95th percentile) a threshold calibrated on that many "
        "normal images has over calibration sets. The conformal guarantee holds on average over "
        "calibration sets, so single classes scatter around the target within that range.",
        "",
        "| class | calibration | realised | 95% interval | expected range |",
        "|---|---|---|---|---|",
    ]
    for normal_class, metrics in per_class.items():
        normal = (metrics["test_images"] - metrics["test_anomalous"]) * metrics["seeds"]
        rate = metrics["scores"][default]["realised_fpr"]
        low, high = clopper_pearson(round(rate * normal), normal)
        calibration = metrics["calibration"]
        spread = fpr_spread(calibration["images"], context.target_fpr)
        lines.append(
            f"| {normal_class} | {calibration['images']} ({calibration['method']}) | "
            f"{100 * rate:.1f} | {100 * low:.1f}–{100 * high:.1f} | "
            f"{100 * spread[0]:.1f}–{100 * spread[1]:.1f} |"
        )
    return lines


def _seed_table(per_class: dict[int, dict]) -> list[str]:
    """With several seeds: each ROC-AUC's standard deviation over seeds (ddof=1) and the 95%
    Student-t interval of its seed mean (%); nothing with one seed."""
    first = next(iter(per_class.values()))
    if first["seeds"] < 2:
        return []
    lines = [
        "",
        f"Over the {first['seeds']} seeds: the standard deviation of each ROC-AUC (ddof=1) and "
        "the 95% Student-t interval of its mean over seeds, % (this interval counts the "
        "training randomness, which the bootstrap above holds fixed; the mean column is the "
        "mean standard deviation):",
        "",
        *_class_table_head(per_class),
    ]
    by_class = [class_methods(metrics) for metrics in per_class.values()]
    for method in by_class[0]:
        rows = [methods[method] for methods in by_class]
        cells = " | ".join(
            f"{100 * m['roc_auc_seed_sd']:.2f} ({100 * m['roc_auc_seed_ci_low']:.1f}–"
            f"{100 * m['roc_auc_seed_ci_high']:.1f})"
            for m in rows
        )
        mean_sd = 100 * np.mean([m["roc_auc_seed_sd"] for m in rows])
        lines.append(f"| {METHOD_TITLES.get(method, method)} | {cells} | {mean_sd:.2f} |")
    return lines


def _per_class_table(
    context: ReportContext, per_class: dict[int, dict], summary: dict
) -> list[str]:
    """Every metric of the primary score per class, the means, and the ROC figure."""
    primary = context.primary_score
    lines = [
        "",
        f"## Per class, score `{primary}` (the one `convvae score` uses)",
        "",
        "Average precision with anomalies as the positive class (AUPR-out) and with normal "
        "images positive (AUPR-in), each beside its chance level (the positive class's share); "
        "the realised false-positive rate is the share of normal *test* images flagged at the "
        f"threshold, whose target is {context.target_fpr:.0%}; F1 (anomalies "
        "positive) beside the F1 of flagging every image. *Flagged@95*: the share of normal "
        "images flagged when 95% of the anomalies are caught (anomalies positive); *passed@95*: "
        "the share of anomalies passed when 95% of the normal images pass (the OOD literature's "
        "FPR95, normal images positive).",
        "",
        "| class | ROC-AUC (95% CI) | AUPR-out (chance) | AUPR-in (chance) | flagged@95 | "
        "passed@95 | threshold | realised FPR | F1 (flag all) | train images |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for normal_class, metrics in per_class.items():
        m = metrics["scores"][primary]
        lines.append(
            f"| {normal_class} ({metrics['class_name']}) | {m['roc_auc']:.3f} "
            f"({m['roc_auc_ci_low']:.3f}–{m['roc_auc_ci_high']:.3f}) | "
            f"{m['average_precision']:.3f} ({m['average_precision_chance']:.3f}) | "
            f"{m['average_precision_in']:.3f} ({m['average_precision_in_chance']:.3f}) | "
            f"{m['normal_flagged_at_95_recall']:.3f} | {m['anomalies_passed_at_95_normal']:.3f} | "
            f"{m['threshold']:.2f} | {m['realised_fpr']:.3f} | "
            f"{m['f1']:.3f} ({m['f1_flag_all']:.3f}) | {metrics['train_images']} |"
        )
    mean = {key: summary[f"{primary}.{key}_mean"] for key in METRIC_KEYS}
    lines += [
        f"| mean | {mean['roc_auc']:.3f} | {mean['average_precision']:.3f} | "
        f"{mean['average_precision_in']:.3f} | {mean['normal_flagged_at_95_recall']:.3f} | "
        f"{mean['anomalies_passed_at_95_normal']:.3f} | | "
        f"{mean['realised_fpr']:.3f} | {mean['f1']:.3f} | |",
        "",
        f"![ROC curves per normal class, score {primary}]({context.roc_figure_name})",
        "",
    ]
    return lines
