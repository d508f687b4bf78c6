"""The benchmark report's figures (seed-0 ROC curves per class, every method's mean ROC-AUC),
and the report a source without classes gets instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convvae.benchmark.report import METHOD_TITLES, SCORE_TITLES
from convvae.runtime.files import atomic_path


def save_roc_figure(curves: dict[int, list[dict]], score: str, path: Path) -> None:
    """One ROC curve per normal class (seed 0's) as a PNG at ``path``, written atomically.

    ``curves`` maps each normal class to its curve's points, rows {"fpr", "tpr"} (rates in
    [0, 1]); the legend shows the area under the curve drawn (seed 0's, not the seed mean the
    tables report); ``score`` names the score the curves are of.
    """
    import matplotlib  # here, not at the top: only the report stage draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for normal_class, rows in curves.items():
        fpr, tpr = [row["fpr"] for row in rows], [row["tpr"] for row in rows]
        ax.plot(fpr, tpr, label=f"{normal_class}: {np.trapezoid(tpr, fpr):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (normal flagged)")
    ax.set_ylabel("true positive rate (anomalies flagged)")
    ax.set_title(f"One-class ROC per normal class (seed 0), score {score}")
    ax.legend(title="normal class: area of this curve", fontsize=7, loc="lower right")
    _save_figure(fig, path)


def save_methods_figure(summary: dict, primary: str, path: Path) -> None:
    """Mean ROC-AUC over classes per method (ours and the peers) as horizontal bars, each
    labelled with its seconds per class; written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [
        key.removesuffix(".roc_auc_mean") for key in summary if key.endswith(".roc_auc_mean")
    ]
    methods.sort(key=lambda m: summary[f"{m}.roc_auc_mean"])
    means = [100 * summary[f"{m}.roc_auc_mean"] for m in methods]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(methods) + 1.2), dpi=100)
    colours = ["tab:blue" if m in SCORE_TITLES else "tab:grey" for m in methods]
    bars = ax.barh([METHOD_TITLES.get(m, m) for m in methods], means, color=colours)
    for bar, method in zip(bars, methods, strict=True):
        seconds = summary.get(f"{method}.seconds_per_class")
        label = f"{bar.get_width():.1f}" + (f"  ({seconds:.1f} s/class)" if seconds else "")
        weight = "bold" if method == primary else "normal"
        ax.text(
            bar.get_width() + 0.3,
            bar.get_y() + bar.get_height() / 2,
            label,
            va="center",
            fontsize=8,
            fontweight=weight,
        )
    ax.set_xlim(max(0.0, min(means) - 10), 100)
    ax.set_xlabel(f"mean ROC-AUC over {summary['classes']} classes (%); blue: ConvVAE, grey: peers")
    ax.set_title(f"One-class benchmark, {summary['data_source']}")
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically and close it, even when saving fails."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def write_skipped_report(reason: str, report: Path, figures: list[Path]) -> None:
    """The report stage's outputs when there is no class benchmark to report: the report says
    why, and each figure shows the same line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_path(report) as tmp:
        tmp.write_text(f"# One-class anomaly benchmark\n\nNot run: {reason}\n")
    for path in figures:
        fig, ax = plt.subplots(figsize=(7, 1.2), dpi=100)
        ax.axis("off")
        ax.text(0.5, 0.5, f"Not run: {reason}", ha="center", va="center", wrap=True, fontsize=8)
        _save_figure(fig, path)
