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
    ``per_class`` (class -> its metrics: ``scores`` and ``peers``) with the interval of the
    averaged paired replicates (class -> method -> replicates)."""
    methods = [m for m in _methods(next(iter(per_class.values()))) if m != default]
    found = {}
    for method in methods:
        per_class_differences = []
        for c, metrics in per_class.items():
            aucs = {name: values["roc_auc"] for name, values in _methods(metrics).items()}
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


def _methods(metrics: dict) -> dict[str, dict]:
    return {**metrics["scores"], **metrics.get("peers", {})}
