"""Do deeper encoder features make the VAE the reason? The patch map from the first
convolution (today's), from the second, and from both (PatchCore's recipe: the first layer's
features averaged over 3x3 neighbours beside the second layer's, upsampled), each with the
trained encoder and with the same network untrained (issue 26, item 3), on selection folders
only.

Per folder: one model with every default (30 epochs at most, as the other selection scripts)
and the network our training starts from (``untrained_model``, the same seed). For each
feature set and network: a coreset bank of 16,384 rows of the training images' features
(``convvae.anomaly.patch_bank``), each test patch's distance to its nearest row, upsampled and
smoothed as the scorer does (``map_sigma``); the image score is the map's maximum
(``patch_knn``). Prints and appends one JSON line per folder: image and pixel ROC-AUC per
variant, paired bootstrap intervals of image ROC-AUC differences, seconds.

    PYTHONPATH=src python docs/benchmark/folder-selection/multiscale_patches.py FOLDER SIZE --out F
    python docs/benchmark/folder-selection/multiscale_patches.py --table F
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.knn import knn_distance
from convvae.anomaly.patch_bank import coreset_bank
from convvae.anomaly.scorer import map_sigma
from convvae.benchmark.ablations import untrained_model
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

LAYERS = ("conv1", "conv2", "conv1+conv2")
DIFFERENCES = (
    ("trained conv1", "untrained conv1"),
    ("trained conv2", "untrained conv2"),
    ("trained conv1+conv2", "untrained conv1+conv2"),
    ("trained conv1+conv2", "trained conv1"),
    ("trained conv2", "trained conv1"),
)


def extractor(model, layer: str):
    """images (B, C, H, W) in [0, 1] → features (B, C', H1, W1) on the first layer's grid."""

    def features(x: torch.Tensor) -> torch.Tensor:
        first = model.encoder[:2](x)
        if layer == "conv1":
            return first
        second = F.interpolate(model.encoder[2:4](first), first.shape[-2:], mode="bilinear",
                               align_corners=False)  # fmt: skip
        if layer == "conv2":
            return second
        return torch.cat([F.avg_pool2d(first, 3, 1, 1, count_include_pad=False), second], 1)

    return features


def batches(images: np.ndarray):
    for start in range(0, len(images), 128):
        yield torch.from_numpy(images[start : start + 128]).float() / 255


@torch.no_grad()
def maps_and_scores(model, layer: str, train: np.ndarray, test: np.ndarray):
    features = extractor(model, layer)
    grid = features(torch.from_numpy(train[:1]).float() / 255).shape
    bank = coreset_bank(features, batches(train), len(train) * grid[2] * grid[3])
    maps = []
    for x in batches(test):
        found = features(x)
        n, channels, height, width = found.shape
        rows = found.permute(0, 2, 3, 1).reshape(-1, channels)
        distance = knn_distance(rows, bank, k=1).reshape(n, 1, height, width).float()
        maps.append(F.interpolate(distance, x.shape[-2:], mode="bilinear", align_corners=False))
    maps = torch.cat(maps)[:, 0].numpy()
    sigma = map_sigma(test.shape[-2:])
    maps = np.stack([ndimage.gaussian_filter(m, sigma) for m in maps])
    return maps, maps.reshape(len(maps), -1).max(1)


def run(folder: str, size: int) -> dict:
    started = time.perf_counter()
    data = {"source": "folder", "path": folder, "image_size": size}
    params = parse_params({"data": data, "train": {"epochs": 30}})
    _, splits = load_configured(params.data)
    fitted = train_and_fit(params.model, params.train, params.anomaly, splits.train.images,
                           splits.val.images, log=lambda line: None)  # fmt: skip
    shape = splits.train.images.shape[1:]
    networks = {
        "trained": fitted.training.model.eval(),
        "untrained": untrained_model(params.model, shape, params.train.seed),
    }
    test = splits.test
    labels = (test.labels != 0).astype(int)
    with_masks = test.mask_known if test.masks is not None else None
    result = {"folder": folder, "size": size, "train_images": len(splits.train.images),
              "variants": {}, "differences": {}}  # fmt: skip
    scores = {}
    for network, model in networks.items():
        for layer in LAYERS:
            name = f"{network} {layer}"
            maps, scores[name] = maps_and_scores(model, layer, splits.train.images, test.images)
            row = {"image_roc_auc": float(roc_auc_score(labels, scores[name]))}
            if with_masks is not None and (with_masks & (labels > 0)).any():
                row["pixel_roc_auc"] = pixel_roc_auc(maps[with_masks], test.masks[with_masks])
            result["variants"][name] = row
    for ours, other in DIFFERENCES:
        diff = roc_auc_difference(labels, scores[ours], scores[other])
        result["differences"][f"{ours} - {other}"] = [diff.difference, diff.ci_low, diff.ci_high]
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def table(path: str) -> str:
    variants = [f"{n} {layer}" for n in ("trained", "untrained") for layer in LAYERS]
    keys = [f"{a} - {b}" for a, b in DIFFERENCES]
    lines = [
        "| folder | size | " + " | ".join([*variants, *keys]) + " | seconds |",
        "|---|---:|" + "---:|" * len(variants) + "---|" * len(keys) + "---:|",
    ]
    for row in read_rows(path):
        cells = [auc_cell(row["variants"][name]) for name in variants]
        cells += [interval_cell(row["differences"][key]) for key in keys]
        name = row["folder"].rstrip("/").split("/")[-1]
        seconds = f" | {row['seconds']:.0f} |"
        lines.append(f"| {name} | {row['size']} | " + " | ".join(cells) + seconds)
    return "\n".join(lines)


def main() -> None:
    results_main(folder_parser(), lambda args: [run(args.folder, args.size)], table)


if __name__ == "__main__":
    main()
