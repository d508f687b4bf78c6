"""Which patch bank: a random subset or a greedy coreset, and how many rows (selection folders).

One model per folder (every default, 30 epochs at most, as select_adaptive.py), then the patch
map and ``patch_knn`` with each bank below, the same model and test images:

- ``random65536``: the bank before this choice (a seeded random subset of 65,536 rows);
- ``random16384`` / ``random4096``: a random subset of that many rows;
- ``coreset16384`` / ``coreset4096``: the greedy coreset of that many rows from a random pool of
  8 times as many (``convvae.anomaly.patch_bank``), chosen over the whole pool at once;
- ``coreset16384parts`` / ``coreset8192parts``: the same, the pool cut into parts of 32,768 rows,
  each giving its share of the bank (the cheaper search; added after the first two folders ran);
- ``all``: every patch of every training image (the exact search), where there are at most
  300,000.

Prints and appends one JSON line per folder: image and pixel ROC-AUC per bank, the paired
bootstrap interval of each bank's image ROC-AUC minus random65536's, seconds to choose each bank
and to score the test images with it.

    PYTHONPATH=src python docs/benchmark/folder-selection/coreset_bank.py FOLDER SIZE --out F
    python docs/benchmark/folder-selection/coreset_bank.py --table F   # the README's table
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.patch_bank import coreset_bank, pooled_rows
from convvae.anomaly.reference import Reference
from convvae.anomaly.scorer import Scorer, _passes
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import score_and_map
from convvae.config import parse_params
from convvae.data.splits import load_configured
from convvae.metrics.pixel import pixel_roc_auc
from convvae.metrics.stats import roc_auc_difference

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from folder_runs import (  # noqa: E402
    auc_cell,
    folder_parser,
    interval_cell,
    read_rows,
    results_main,
)

EXACT_LIMIT = 300_000


def banks(model, images: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """Each bank of the module docstring with its seconds to choose."""
    height, width = model.patch_grid
    total = len(images) * height * width
    found = {}
    with torch.no_grad():
        for name, rows in (("random65536", 65536), ("random16384", 16384), ("random4096", 4096),
                           *((("all", total),) if total <= EXACT_LIMIT else ())):  # fmt: skip
            started = time.perf_counter()
            bank = pooled_rows(model.patch_features, _passes(images), total, rows)
            found[name] = bank.numpy(), time.perf_counter() - started
        for name, rows, chunk_rows in (("coreset16384", 16384, None),
                                       ("coreset16384parts", 16384, 32768),
                                       ("coreset8192parts", 8192, 32768),
                                       ("coreset4096", 4096, None)):  # fmt: skip
            started = time.perf_counter()
            bank = coreset_bank(model.patch_features, _passes(images), total, rows, chunk_rows)
            found[name] = bank.numpy(), time.perf_counter() - started
    return found


TABLE_BANKS = ("random65536", "random16384", "coreset16384", "coreset16384parts",
               "coreset8192parts", "all")  # fmt: skip


def _cell(banks: dict, bank: str) -> str:
    """Image ROC-AUC x100, with the pixel one in brackets where the folder has masks."""
    return auc_cell(banks[bank]) if bank in banks else "-"


def table(path: str) -> str:
    """Image (pixel) ROC-AUC x100 per folder and bank, the newest run of each folder, and the
    parts coreset's difference from random65536 with its interval and seconds to choose."""
    rows = read_rows(path)
    latest = {(row["folder"].rstrip("/").split("/")[-1], row["size"]): row for row in rows}
    lines = [
        "| folder | size | patches | " + " | ".join(TABLE_BANKS) + " | coreset16384parts minus "
        "random65536, image [95%] | seconds to choose (parts / whole pool) |",
        "|---|---:|---:|" + "---:|" * len(TABLE_BANKS) + "---|---|",
    ]
    for (name, size), row in latest.items():
        banks = row["banks"]
        diff = banks.get("coreset16384parts", {}).get("minus_random65536")
        diff_cell = "-" if diff is None else interval_cell(diff)
        timed = [b for b in ("coreset16384parts", "coreset16384") if b in banks]
        seconds = " / ".join(f"{banks[b]['choose_s']:.1f}" for b in timed)
        cells = " | ".join(_cell(banks, b) for b in TABLE_BANKS)
        lines.append(f"| {name} | {size} | {row['patches']} | {cells} | {diff_cell} | {seconds} |")
    return "\n".join(lines)


def main() -> None:
    results_main(folder_parser(), lambda args: [run(args.folder, args.size)], table)


def run(folder: str, size: int) -> dict:
    """Every bank of the module docstring on one folder's model and test images."""
    data = {"source": "folder", "path": folder, "image_size": size}
    params = parse_params({"data": data, "train": {"epochs": 30}})
    _, splits = load_configured(params.data)
    fitted = train_and_fit(params.model, params.train, params.anomaly, splits.train.images,
                           splits.val.images, log=lambda line: None)  # fmt: skip
    model, test = fitted.training.model, splits.test
    labels = (test.labels != 0).astype(int)
    with_masks = test.mask_known if test.masks is not None else None
    result = {"folder": folder, "size": size, "train_images": len(splits.train.images),
              "patches": len(splits.train.images) * int(np.prod(model.patch_grid)),
              "banks": {}}  # fmt: skip
    scores = {}
    for name, (bank, choose_s) in banks(model, splits.train.images).items():
        reference = Reference(splits.train.images, {}, {}, patch_bank=bank)
        started = time.perf_counter()
        found, maps = score_and_map(Scorer(model, reference, ScoreSpec("patch_knn")), test.images,
                                    ("patch_knn",))  # fmt: skip
        scores[name] = found["patch_knn"]
        row = {"rows": len(bank), "choose_s": round(choose_s, 2),
               "score_s": round(time.perf_counter() - started, 2),
               "image_roc_auc": float(roc_auc_score(labels, scores[name]))}  # fmt: skip
        if with_masks is not None and (with_masks & (labels > 0)).any():
            row["pixel_roc_auc"] = pixel_roc_auc(maps[with_masks], test.masks[with_masks])
        result["banks"][name] = row
    for name, values in scores.items():
        if name != "random65536":
            diff = roc_auc_difference(labels, values, scores["random65536"])
            result["banks"][name]["minus_random65536"] = [
                diff.difference,
                diff.ci_low,
                diff.ci_high,
            ]
    return result


if __name__ == "__main__":
    main()
