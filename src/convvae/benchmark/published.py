"""Published one-class results that the benchmark report quotes beside ours, with their sources
and protocols (``published_results.yaml`` beside this module): context, never a ranking."""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass

import yaml

# Published tables always cover the ten classes of MNIST and Fashion-MNIST.
PUBLISHED_CLASSES = 10


@dataclass(frozen=True)
class PublishedRow:
    """One published result: ROC-AUC in % per normal class 0..9 (None when only the mean is
    published), the mean (a number, or quoted text such as "96.3 ± 2.5"), and where it comes
    from with its protocol."""

    method: str
    per_class: list[float] | None
    mean: float | str
    source: str


@functools.cache
def _published_table() -> dict[str, tuple[PublishedRow, ...]]:
    """Every data source's published rows, read once from the packaged YAML file."""
    text = (importlib.resources.files("convvae.benchmark") / "published_results.yaml").read_text(
        "utf-8"
    )
    return {
        data_source: tuple(PublishedRow(**row) for row in rows)
        for data_source, rows in yaml.safe_load(text).items()
    }


def published_results(data_source: str) -> list[PublishedRow]:
    """The published rows to compare ``data_source``'s benchmark with; empty when there are none."""
    return list(_published_table().get(data_source, ()))


def published_section(data_source: str) -> list[str]:
    """The published results for ``data_source``, with their caveats; nothing when none."""
    rows = published_results(data_source)
    if not rows:
        return []
    columns = " | ".join(map(str, range(PUBLISHED_CLASSES)))
    lines = [
        "",
        "## Published ROC-AUC (%), standard one-class protocol",
        "",
        f"| method | {columns} | mean | source, protocol |",
        "|---" * (PUBLISHED_CLASSES + 3) + "|",
    ]
    for row in rows:
        values = row.per_class if row.per_class is not None else []
        cells = [f"{value:.1f}" for value in values] or [""] * PUBLISHED_CLASSES
        mean = row.mean if isinstance(row.mean, str) else f"{row.mean:.1f}"
        lines.append(f"| {row.method} | {' | '.join(cells)} | {mean} | {row.source} |")
    lines += [
        "",
        "All rows are quoted from later papers' tables (AGAD = Cheng et al. 2020, "
        "Adversarial Generative Anomaly Detection), not checked against the original "
        "papers. Baselines are sensitive to preprocessing (a rerun of Isolation Forest got "
        "0.93 on MNIST class 0 where Deep SVDD's paper says 0.98, lukasruff/Deep-SVDD#14).",
    ]
    return lines
