"""How the folder source's defaults were chosen: on held-out normal tiles, never on test images.

Per texture (a scikit-image photograph, offline), 330 random tiles: 200 train, 50 validation
(early stopping; the even half also fits the Reference), 80 held out, half of which get one
synthetic defect (a cut-paste rectangle from the same tile, brightness-jittered, or a disc of one
random colour: NOT the scratch / foreign-patch defects of the tests and the folder benchmark).
Prints one JSON line per texture: image ROC-AUC of each score and of the maximum of each map,
pixel ROC-AUC and AUPRO of each map, PyOD KNN beside them.

    .venv/bin/python docs/benchmark/folder-selection/select_map_and_score.py gaussian

gaussian.jsonl holds the run the README quotes (one seed, 2-core CPU, 2026-11-30).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from convvae.anomaly.maps import anomaly_maps, map_sigma  # noqa: E402

from convvae.anomaly.scores import all_scores, fit_reference  # noqa: E402
from convvae.benchmark.peers import run_peer  # noqa: E402
from convvae.config import parse_params  # noqa: E402
from convvae.metrics.pixel import pixel_aupro, pixel_roc_auc, smooth_maps  # noqa: E402
from convvae.model.vae import ConvVAE, resolve_architecture  # noqa: E402
from convvae.training.trainer import Trainer  # noqa: E402
from tests.conftest import quick_train_config  # noqa: E402

TEXTURES = [("brick", 32), ("grass", 32), ("immunohistochemistry", 32), ("coffee", 32),
            ("brick", 64), ("immunohistochemistry", 64)]  # fmt: skip


def tiles(name: str, size: int, n: int, seed: int) -> np.ndarray:
    photo = getattr(skimage.data, name)()
    photo = photo[::2, ::2] if min(photo.shape[:2]) > 4 * size else photo
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        top = rng.integers(0, photo.shape[0] - size)
        left = rng.integers(0, photo.shape[1] - size)
        tile = photo[top : top + size, left : left + size]
        out.append(tile[None] if tile.ndim == 2 else tile[..., :3].transpose(2, 0, 1))
    return np.stack(out).astype(np.uint8)


def synthetic_defects(images: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Even images: a rectangle copied from elsewhere in the tile, brightness-jittered; odd: a
    disc of one random colour. Masks are 1 where pixels changed."""
    out, masks = images.copy(), np.zeros((len(images), *images.shape[2:]), np.uint8)
    _, channels, height, width = images.shape
    for i in range(len(images)):
        side = rng.integers(height // 6, height // 3)
        top, left = rng.integers(0, height - side), rng.integers(0, width - side)
        if i % 2 == 0:
            src_top, src_left = rng.integers(0, height - side), rng.integers(0, width - side)
            source = images[i, :, src_top : src_top + side, src_left : src_left + side]
            shift = rng.integers(-40, 40)
            out[i, :, top : top + side, left : left + side] = np.clip(source.astype(int) + shift,
                                                                      0, 255)  # fmt: skip
            changed = (
                out[i, :, top : top + side, left : left + side]
                != images[i, :, top : top + side, left : left + side]
            )
            masks[i, top : top + side, left : left + side] = changed.any(0)
        else:
            rows, cols = np.mgrid[:height, :width]
            disc = (rows - top - side / 2) ** 2 + (cols - left - side / 2) ** 2 < (side / 2) ** 2
            out[i][:, disc] = rng.integers(0, 256, size=(channels, 1))
            masks[i][disc] = 1
    return out, masks


def fused_map(model, images: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """The rejected candidate: the mean of the deviance and feature maps, each standardised by
    its pixel statistics on held-out normal tiles."""
    parts = []
    for kind in ("deviance", "feature_knn"):
        reference = anomaly_maps(model, held_out, kind)
        parts.append((anomaly_maps(model, images, kind) - reference.mean()) / reference.std())
    return (parts[0] + parts[1]) / 2


def one_texture(name: str, size: int, likelihood: str) -> dict:
    images = tiles(name, size, 330, 3)
    train, val, held = images[:200], images[200:250], images[250:]
    bad, masks = synthetic_defects(held, np.random.default_rng(7))
    test = np.concatenate([held, bad])
    labels = np.r_[np.zeros(len(held)), np.ones(len(bad))]
    pixel_truth = np.concatenate([np.zeros_like(masks), masks])
    params = parse_params(
        {"data": {"source": "folder", "path": "x"}, "model": {"likelihood": likelihood}}
    )
    torch.manual_seed(0)
    model = ConvVAE(resolve_architecture(params.model, train.shape[1:]))
    started = time.perf_counter()
    config = quick_train_config(epochs=40, lr=1e-3, early_stopping_patience=5)
    trainer = Trainer(model, config, progress=False)
    model = trainer.fit(torch.from_numpy(train), torch.from_numpy(val)).model
    result = {"tex": name, "size": size, "lik": likelihood,
              "train_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    fit_reference(model, train, val[0::2], 16, 0)
    scores = all_scores(model, test, 16, 0)
    for score in ("fused", "excess_nll", "hidden_knn", "cosine_knn", "recon_mse"):
        result[score] = round(roc_auc_score(labels, scores[score]), 3)
    maps = {kind: anomaly_maps(model, test, kind) for kind in ("deviance", "feature_knn")}
    maps["fused"] = fused_map(model, test, val[0::2])
    for kind, values in maps.items():
        smoothed = smooth_maps(values, map_sigma(model.arch.image_size))
        result[f"max_{kind}"] = round(roc_auc_score(labels, smoothed.max(axis=(1, 2))), 3)
        result[f"px_{kind}"] = round(pixel_roc_auc(smoothed, pixel_truth), 3)
        result[f"pro_{kind}"] = round(pixel_aupro(smoothed, pixel_truth), 3)
    knn = run_peer("pyod_knn", train, {"test": test}).scores["test"]
    result["pyod_knn"] = round(roc_auc_score(labels, knn), 3)
    return result


if __name__ == "__main__":
    for texture, side in TEXTURES:
        print(json.dumps(one_texture(texture, side, sys.argv[1])), flush=True)
