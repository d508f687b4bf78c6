"""Our default score against every other method, over the benchmark's normal classes: the mean
ROC-AUC difference with a paired bootstrap interval.

Each class stage resamples its test images once (its seed) and keeps every method's ROC-AUC
replicates; the difference of two methods' replicates is then paired, and the mean over classes
averages the classes' difference replicates (the classes' resamples are independent).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from convvae.benchmark.report import class_methods
from convvae.errors import DataError
from convvae.metrics.stats import AucDifference, mean_difference

_RERUN = "re-run the benchmark stages (dvc repro -f benchmark)"


def read_replicates(path: str | Path) -> dict[str, np.ndarray]:
    """A class stage's replicates (method -> float64 (n_resamples,)); missing or corrupt is a
    DataError."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable bootstrap replicates ({err}); {_RERUN}") from None


def mean_differences(
    per_class: dict[int, dict], replicates: dict[int, dict[str, np.ndarray]], default: str
) -> dict[str, AucDifference]:
    """``default``'s ROC-AUC minus each other method's, averaged over the classes of
    ``per_class`` (class -> its metrics: ``scores``, ``peers`` and ``ablations``) with the
    interval of the averaged paired replicates (class -> method -> replicates)."""
    methods = [m for m in class_methods(next(iter(per_class.values()))) if m != default]
    found = {}
    for method in methods:
        per_class_differences = []
        for c, metrics in per_class.items():
            aucs = {name: values["roc_auc"] for name, values in class_methods(metrics).items()}
            draws = replicates[c]
            if method not in draws or default not in draws:
                raise DataError(f"class {c}: no bootstrap replicates of {method}; {_RERUN}")
            per_class_differences.append(
                AucDifference.of(aucs[default] - aucs[method], draws[default] - draws[method])
            )
        found[method] = mean_difference(per_class_differences)
    return found


def difference_summary(differences: dict[str, AucDifference]) -> dict[str, float]:
    """``diff.<method>.roc_auc_mean``, ``.ci_low`` and ``.ci_high``: our default minus the
    method, in ROC-AUC units, for the summary file."""
    summary = {}
    for method, difference in differences.items():
        summary[f"diff.{method}.roc_auc_mean"] = difference.difference
        summary[f"diff.{method}.ci_low"] = difference.ci_low
        summary[f"diff.{method}.ci_high"] = difference.ci_high
    return summary


def margin_over_vae_free(summary: dict, vae_free: tuple[str, ...]) -> dict:
    """``vae_free_best``: the method with the highest mean ROC-AUC of those in ``vae_free``
    that the summary holds a difference for; ``margin_over_vae_free.roc_auc_mean``, ``.ci_low``
    and ``.ci_high``: our default minus it, with its paired interval. Whether the trained VAE
    is why the default works, in one figure."""
    measured = [m for m in vae_free if f"diff.{m}.roc_auc_mean" in summary]
    if not measured:
        return {}
    best = max(measured, key=lambda m: summary[f"{m}.roc_auc_mean"])
    return {
        "vae_free_best": best,
        **{
            f"margin_over_vae_free.{part}": summary[f"diff.{best}.{part}"]
            for part in ("roc_auc_mean", "ci_low", "ci_high")
        },
    }
