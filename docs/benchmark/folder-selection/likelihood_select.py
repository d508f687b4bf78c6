"""Which pixel likelihood should `folder` sources default to?

Protocol (no test images, none of tests/mvtec.py's defect makers):
  per texture: n normal crops (random position + flips, photo at half size as tests/mvtec.py does)
  split  train 200 / val 30 (early stopping) / held-out A 50 (fit_reference) / held-out B 50
  B-defective: one synthetic defect per B image (cutpaste | noise_blob | bright_spot), with mask
  one model per likelihood, same seed, same data; default architecture for the image shape
  metrics on B-good (50) + B-defective (50): image ROC-AUC of fused / excess_nll / others,
  pixel ROC-AUC + AUPRO of anomaly_maps.

Usage: likelihood_select.py --textures brick,gravel --size 32 --seeds 0 --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
import traceback

import numpy as np
import torch
from PIL import Image
from skimage import data, draw
from sklearn.metrics import roc_auc_score

from convvae.anomaly import all_scores, fit_reference

try:  # the package moved the maps to convvae.maps (deviance | feature_knn | fused)
    from convvae.maps import anomaly_maps as _maps
    from convvae.maps import deviance_maps, smoothed_maps
except ImportError:  # older layout: anomaly.anomaly_maps is the deviance map
    from convvae.anomaly import anomaly_maps as deviance_maps

    _maps = smoothed_maps = None
from convvae.config import TrainConfig, parse_params
from convvae.model import ConvVAE, resolve_architecture
from convvae.pixel_metrics import pixel_aupro, pixel_roc_auc
from convvae.train import Trainer

CANDIDATES = {
    "bernoulli": {"likelihood": "bernoulli"},
    "gauss_pixel": {"likelihood": "gaussian", "variance": "pixel"},
    "gauss_shared": {"likelihood": "gaussian", "variance": "shared"},
    "dlogistic": {"likelihood": "discretized_logistic"},
}
SPLIT = {"train": 200, "val": 30, "A": 50, "B": 50}
DEFECTS = ("cutpaste", "noise_blob", "bright_spot")


def photo(name: str) -> np.ndarray:
    pixels = getattr(data, name)()
    image = Image.fromarray(pixels)
    return np.asarray(image.resize((image.width // 2, image.height // 2), Image.BILINEAR))


def crops(name: str, size: int, n: int, seed: int) -> np.ndarray:
    """n random crops with random flips, uint8 (n, C, size, size)."""
    src, rng = photo(name), np.random.default_rng(seed)
    out = []
    for _ in range(n):
        top = rng.integers(0, src.shape[0] - size + 1)
        left = rng.integers(0, src.shape[1] - size + 1)
        c = src[top : top + size, left : left + size]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c[::-1]
        out.append(np.ascontiguousarray(c))
    arr = np.stack(out)
    return arr.transpose(0, 3, 1, 2).copy() if arr.ndim == 4 else arr[:, None].copy()


# ---- synthetic defects (own; image (C,H,W) uint8 → image, mask (H,W) bool) ----------------------


def cutpaste(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle cut from the same image, pasted elsewhere, brightness (and colour) jittered."""
    c, s, _ = img.shape
    h, w = (int(v) for v in rng.integers(max(3, s // 8), s // 3 + 1, 2))
    sy, sx = rng.integers(0, s - h + 1), rng.integers(0, s - w + 1)
    ty, tx = rng.integers(0, s - h + 1), rng.integers(0, s - w + 1)
    piece = img[:, sy : sy + h, sx : sx + w].astype(np.float32)
    if rng.random() < 0.5:
        piece = piece[:, ::-1, ::-1]  # rotated 180 degrees
    gain = rng.uniform(1.2, 1.5) if rng.random() < 0.5 else rng.uniform(0.55, 0.8)
    gain = gain * (rng.uniform(0.9, 1.1, (c, 1, 1)) if c == 3 else 1.0)
    out = img.astype(np.float32)
    out[:, ty : ty + h, tx : tx + w] = piece * gain
    mask = np.zeros((s, s), bool)
    mask[ty : ty + h, tx : tx + w] = True
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def noise_blob(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An ellipse of strong Gaussian pixel noise."""
    c, s, _ = img.shape
    r = rng.uniform(s / 12, s / 6, 2)
    cy, cx = rng.uniform(r[0], s - r[0]), rng.uniform(r[1], s - r[1])
    rr, cc = draw.ellipse(cy, cx, r[0], r[1], shape=(s, s), rotation=rng.uniform(0, np.pi))
    mask = np.zeros((s, s), bool)
    mask[rr, cc] = True
    sigma = rng.uniform(40, 80)
    out = img.astype(np.float32)
    out[:, mask] += rng.normal(0, sigma, (c, int(mask.sum())))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def bright_spot(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth Gaussian brightness bump (or dip); mask where it exceeds half its amplitude."""
    c, s, _ = img.shape
    sig = rng.uniform(s / 16, s / 8)
    cy, cx = rng.uniform(2 * sig, s - 2 * sig, 2)
    yy, xx = np.mgrid[0:s, 0:s]
    bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
    amp = rng.uniform(50, 90) * (1 if rng.random() < 0.5 else -1)
    out = img.astype(np.float32) + amp * bump[None]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    # the half-amplitude disc, minus pixels the clip left unchanged (already saturated)
    mask = (bump >= 0.5) & (np.abs(out.astype(int) - img.astype(int)).max(0) > 0)
    return out, mask


MAKERS = {"cutpaste": cutpaste, "noise_blob": noise_blob, "bright_spot": bright_spot}


def make_defects(good: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed + 1000)
    imgs, masks, kinds = [], [], []
    for i, img in enumerate(good):
        kind = DEFECTS[i % len(DEFECTS)]
        while True:
            out, mask = MAKERS[kind](img, rng)
            if mask.sum() >= 4:
                break
        imgs.append(out)
        masks.append(mask)
        kinds.append(kind)
    return np.stack(imgs), np.stack(masks), kinds


def auc(neg: np.ndarray, pos: np.ndarray) -> float:
    y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    s = np.r_[neg, pos]
    if not np.isfinite(s).all():
        return float("nan")
    return float(roc_auc_score(y, s))


def run_one(
    texture, size, seed, cand, parts, defects, epochs, patience=5, tag="main", feature_maps=True
):
    b_def, b_mask, kinds = defects
    params = parse_params(
        {"data": {"source": "folder", "path": "/nonexistent"}, "model": CANDIDATES[cand]}
    )
    arch = resolve_architecture(params.model, parts["train"].shape[1:])
    torch.manual_seed(seed)
    model = ConvVAE(arch)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=64,
        lr=1e-3,
        early_stopping_patience=patience,
        device="cpu",
        seed=seed,
    )
    t0 = time.perf_counter()
    res = Trainer(model, cfg, progress=False).fit(
        torch.from_numpy(parts["train"]), torch.from_numpy(parts["val"])
    )
    train_s = time.perf_counter() - t0
    model = res.model
    fit_reference(model, parts["train"], parts["A"], k=16, seed=0)
    good_s = all_scores(model, parts["B"], k=16, seed=0)
    bad_s = all_scores(model, b_def, k=16, seed=0)
    rec = {
        "texture": texture,
        "size": size,
        "seed": seed,
        "cand": cand,
        "tag": tag,
        "train_s": round(train_s, 1),
        "best_epoch": res.best_epoch,
        "epochs_run": len(res.history),
        "best_val": res.best_val_loss,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    for name in ("fused", "excess_nll", "iwae_nll", "hidden_knn", "cosine_knn", "recon_mse"):
        rec[f"img_{name}"] = auc(good_s[name], bad_s[name])
        nonfinite = int((~np.isfinite(good_s[name])).sum() + (~np.isfinite(bad_s[name])).sum())
        if nonfinite:
            rec[f"nonfinite_{name}"] = nonfinite
    for kind in DEFECTS:  # per defect type, fused and excess_nll
        sel = np.array([k == kind for k in kinds])
        rec[f"fused_{kind}"] = auc(good_s["fused"], bad_s["fused"][sel])
        rec[f"xnll_{kind}"] = auc(good_s["excess_nll"], bad_s["excess_nll"][sel])
    masks = np.concatenate([np.zeros_like(b_mask), b_mask])
    both = np.concatenate([parts["B"], b_def])
    kinds_of_map = {
        "pix": lambda im: deviance_maps(model, im),
        "pixr": lambda im: residual_maps(model, im),
    }
    if _maps is not None and feature_maps:
        kinds_of_map["pixf"] = lambda im: smoothed_maps(model, im)  # what outputs show (fused)
        kinds_of_map["pixk"] = lambda im: _maps(model, im, "feature_knn")
    for prefix, fn in kinds_of_map.items():
        try:
            maps = fn(both)
            rec[f"{prefix}_auc"] = pixel_roc_auc(maps, masks)
            rec[f"{prefix}_aupro"] = pixel_aupro(maps, masks)
        except Exception as err:
            rec[f"{prefix}_error"] = repr(err)
            rec[f"{prefix}_tb"] = traceback.format_exc()[-1200:]
    return rec


@torch.no_grad()
def residual_maps(model, images):
    """Likelihood-agnostic: squared error of the decoded mean, summed over channels."""
    from convvae.likelihood import pixel_mean

    model.eval()
    x = torch.from_numpy(images).float() / 255
    mu, _ = model.encode(x)
    mean = pixel_mean(model.arch.likelihood, model.decode(mu))
    return (mean - x).pow(2).sum(1).numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--textures", default="brick,gravel,immunohistochemistry,coffee")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--cands", default=",".join(CANDIDATES))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--tag", default="main")
    ap.add_argument("--no-feature-maps", action="store_true")
    ap.add_argument("--out", default="/tmp/research/results.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    for texture in a.textures.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            n = sum(SPLIT.values())
            allc = crops(texture, a.size, n, seed=seed)
            parts, i = {}, 0
            for k, m in SPLIT.items():
                parts[k] = allc[i : i + m]
                i += m
            defects = make_defects(parts["B"], seed)
            for cand in a.cands.split(","):
                try:
                    rec = run_one(
                        texture,
                        a.size,
                        seed,
                        cand,
                        parts,
                        defects,
                        a.epochs,
                        None if a.patience <= 0 else a.patience,
                        a.tag,
                        not a.no_feature_maps,
                    )
                except Exception as err:  # record and go on
                    rec = {
                        "texture": texture,
                        "size": a.size,
                        "seed": seed,
                        "cand": cand,
                        "tag": a.tag,
                        "error": repr(err),
                        "tb": traceback.format_exc()[-1500:],
                    }
                print(
                    json.dumps(
                        {
                            k: (round(v, 4) if isinstance(v, float) else v)
                            for k, v in rec.items()
                            if k != "tb"
                        }
                    ),
                    flush=True,
                )
                with open(a.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
