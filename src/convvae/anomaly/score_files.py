"""`convvae score`'s output: a CSV row per image (and, on request, each image's map files)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from convvae.anomaly.detector import Detector
from convvae.anomaly.map_images import map_scale, write_maps
from convvae.data.image_files import ImageBatch

# normalized_score is p_value's name before 0.2, written for one release more where it stood
# (p_value comes last, so a reader by position finds the old columns where they were).
CSV_COLUMNS = ("file", "score", "normalized_score", "is_anomaly", "p_value")


def write_scores(
    detector: Detector,
    batches: Iterable[ImageBatch],
    table: TextIO,
    maps: str | Path | None = None,
    on_batch=None,
) -> int:
    """Score and decide every batch, one CSV row per image into ``table``; with ``maps``, each
    image's map files into that folder (one colour scale for all). ``on_batch`` is called with
    each batch's size (a progress bar). Returns the number of images flagged."""
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    # Records written before 0.2 hold no scale: then the reference images' own maps set it.
    high = detector.record.context.get("map_scale") or map_scale(detector.scorer)
    flagged = 0
    for batch in batches:  # bounded memory: one batch of images at a time
        if maps is None:
            decided = detector.decide(batch.images)
        else:
            decided, batch_maps = detector.decide_and_map(batch.images)
            write_maps(batch.images, batch_maps, batch.names, maps, high)
        writer.writerows(
            (spreadsheet_text(name), f"{score:.4f}", f"{p_value:.4f}", int(flag), f"{p_value:.4f}")
            for name, score, p_value, flag in zip(
                batch.names,
                decided["score"],
                decided["p_value"],
                decided["is_anomaly"],
                strict=True,
            )
        )
        flagged += int(decided["is_anomaly"].sum())
        if on_batch is not None:
            on_batch(len(batch.names))
    return flagged


def spreadsheet_text(cell: str) -> str:
    """``cell`` as text a spreadsheet will not run: a file named ``=HYPERLINK(...).png`` (or
    starting +, -, @, tab or carriage return) gets a leading ``'``, as OWASP advises for CSV."""
    return f"'{cell}" if cell.startswith(("=", "+", "-", "@", "\t", "\r")) else cell
