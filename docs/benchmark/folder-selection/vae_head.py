"""Can training for the job make the VAE the reason? DRAEM's two halves on our VAE (issue 26,
item 3), on selection folders only.

Per folder: one model with every default (30 epochs at most, as select_adaptive.py), its
reference fitted as the pipeline fits it. Then, from the folder's normal training images only,
synthetic anomalies as DRAEM makes them (Zavrtanik et al. 2021), with the folder's own images
as the texture source instead of DTD (no external data): a smooth random mask (two octaves of
value noise, thresholded to cover 2-20% of the image) filled with another training image
(turned, flipped, inverted or re-contrasted) or a smooth random colour field, blended with the
image at an opacity of 0.2-1. None of these is a test defect's generator (scratches, pasted
rectangles, erased bands, extra strokes, other photographs, real cell defects).

Maps and image scores (the image score of a map: the largest value of its mean over
``pool`` x ``pool`` windows, as DRAEM scores):

- ``default``: the folder default, ``patch_and_fused``, with its ``feature_knn`` map;
- ``residual``: |input - reconstruction| of the trained VAE, mean over channels;
- ``restore_residual``: the same for a copy of the VAE fine-tuned to restore: input the
  corrupted image, target the clean one, its own loss (DRAEM's reconstructive half);
- ``head_vae``: a small convolutional head (DRAEM's discriminative half) trained to segment the
  synthetic anomaly from the input, the restoring VAE's reconstruction and their difference;
- ``head_base``: the same head from the input, the trained VAE's own reconstruction (no
  restoring) and their difference;
- ``head_pixels``: the same head from the input alone: no VAE (the ablation that says whether
  the VAE is the reason);
- ``default+head_vae``: the mean of ``default`` and ``head_vae``, each standardised on held-out
  normal images (the selection half of the validation images).

Prints and appends one JSON line per folder: image and pixel ROC-AUC per method, paired
bootstrap intervals of the image ROC-AUC differences, seconds.

    PYTHONPATH=src python docs/benchmark/folder-selection/vae_head.py FOLDER SIZE --out F
    python docs/benchmark/folder-selection/vae_head.py --table F   # the README's table
"""

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import score_and_map
from convvae.config import parse_params
from convvae.data.splits import load_configured, selection_and_calibration
from convvae.model.vae import elbo_terms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from folder_runs import (  # noqa: E402
    auc_cell,
    folder_parser,
    interval_cell,
    read_rows,
    results_main,
    scored_methods,
)

METHODS = ("default", "residual", "restore_residual", "head_vae", "head_base", "head_pixels",
           "default+head_vae")  # fmt: skip
DIFFERENCES = (("head_vae", "head_pixels"), ("head_vae", "head_base"), ("head_vae", "default"),
               ("default+head_vae", "default"), ("restore_residual", "residual"))  # fmt: skip
BATCH = 16


def smooth_field(rng: np.random.Generator, n: int, channels: int, height: int, width: int):
    """(n, channels, H, W) float32 value noise of two octaves, each image its own grid."""
    field = torch.zeros(n, channels, height, width)
    for cells in (int(rng.integers(2, 5)), int(rng.integers(5, 9))):
        grid = torch.from_numpy(rng.standard_normal((n, channels, cells + 1, cells + 1)))
        field += F.interpolate(grid.float(), (height, width), mode="bicubic", align_corners=True)
    return field


def corrupted(x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x: float (B, C, H, W) in [0, 1] → (images with a synthetic anomaly in about half of
    them, masks (B, 1, H, W) in {0, 1})."""
    n, channels, height, width = x.shape
    noise = smooth_field(rng, n, 1, height, width).flatten(1)
    share = torch.from_numpy(rng.uniform(0.02, 0.2, n)).float()
    rank = ((1 - share) * (noise.shape[1] - 1)).long()
    cut = noise.sort(dim=1).values.gather(1, rank[:, None])
    masks = (noise >= cut).float().view(n, 1, height, width)
    masks *= torch.from_numpy(rng.random(n) < 0.5).float().view(n, 1, 1, 1)
    source = x[torch.from_numpy(rng.permutation(n))].clone()
    for i in range(n):
        kind = int(rng.integers(0, 5))
        if kind == 0:
            source[i] = torch.rot90(source[i], int(rng.integers(1, 4)), (1, 2))
        elif kind == 1:
            source[i] = source[i].flip(int(rng.integers(1, 3)))
        elif kind == 2:
            source[i] = 1 - source[i]
        elif kind == 3:
            source[i] = (source[i] - 0.5) * rng.uniform(0.3, 2.5) + 0.5 + rng.uniform(-0.3, 0.3)
        else:
            colour = smooth_field(rng, 1, channels, height, width)[0]
            source[i] = torch.sigmoid(colour * rng.uniform(0.5, 3.0))
    opacity = torch.from_numpy(rng.uniform(0.2, 1.0, n)).float().view(n, 1, 1, 1)
    blended = x * (1 - masks * opacity) + source.clamp(0, 1) * masks * opacity
    return (blended * 255).round() / 255, masks


class Head(nn.Module):
    """DRAEM's discriminative half, small: dilated convolutions (receptive field 31 px) → one
    logit per pixel."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        layers, channels = [], in_channels
        for dilation in (1, 2, 4, 8):
            layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation),
                       nn.GroupNorm(8, width), nn.ReLU(inplace=True)]  # fmt: skip
            channels = width
        self.body = nn.Sequential(*layers, nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def reconstruction(vae, x: torch.Tensor) -> torch.Tensor:
    mu, _ = vae.encode(x)
    return vae.decode_mean(mu)


def head_input(vae, x: torch.Tensor) -> torch.Tensor:
    if vae is None:
        return x
    with torch.no_grad():
        recon = reconstruction(vae, x)
    return torch.cat([x, recon, x - recon], 1)


def restoring_copy(vae, images: torch.Tensor, epochs: int, seed: int):
    """A copy of ``vae`` fine-tuned to restore: corrupted input, clean target, its ELBO."""
    vae = copy.deepcopy(vae).train()
    for parameter in vae.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-4)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in images[torch.randperm(len(images), generator=generator)].split(BATCH * 2):
            odd, _ = corrupted(batch, rng)
            out, mu, logvar = vae(odd, generator)
            nll, kl = elbo_terms(out, batch, mu, logvar, vae.arch.likelihood)
            loss = (nll + kl).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return vae.eval()


def trained_head(vae, images: torch.Tensor, epochs: int, seed: int) -> Head:
    torch.manual_seed(seed)
    head = Head(images.shape[1] * (3 if vae is not None else 1))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in images[torch.randperm(len(images), generator=generator)].split(BATCH):
            odd, masks = corrupted(batch, rng)
            logits = head(head_input(vae, odd))
            probs = torch.sigmoid(logits)
            dice = 1 - (2 * (probs * masks).sum() + 1) / (probs.sum() + masks.sum() + 1)
            loss = F.binary_cross_entropy_with_logits(logits, masks) + dice
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


def pooled_max(maps: torch.Tensor, pool: int) -> np.ndarray:
    pooled = F.avg_pool2d(maps[:, None], pool, stride=1, padding=pool // 2)
    return pooled.flatten(1).amax(1).double().numpy()


def maps_of(method: str, parts: dict, images: np.ndarray) -> torch.Tensor:
    """(N, H, W) float maps of ``images`` (uint8) for one of the map methods."""
    found = []
    with torch.no_grad():
        for batch in torch.from_numpy(images).split(64):
            x = batch.float() / 255
            if method == "residual" or method == "restore_residual":
                vae = parts["vae" if method == "residual" else "restorer"]
                found.append((x - reconstruction(vae, x)).abs().mean(1))
            else:
                vae = {"head_vae": parts["restorer"], "head_base": parts["vae"]}.get(method)
                found.append(torch.sigmoid(parts[method](head_input(vae, x)))[:, 0])
    return torch.cat(found)


def standardised(test: np.ndarray, normal: np.ndarray) -> np.ndarray:
    return (test - normal.mean()) / (normal.std() + 1e-12)


def run(folder: str, size: int, epochs: int, seed: int) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = {"source": "folder", "path": folder, "image_size": size}
    params = parse_params({"data": data, "train": {"epochs": 30}})
    _, splits = load_configured(params.data)
    fitted = train_and_fit(params.model, params.train, params.anomaly, splits.train.images,
                           splits.val.images, log=lambda line: None)  # fmt: skip
    vae, test = fitted.training.model.eval(), splits.test
    for parameter in vae.parameters():
        parameter.requires_grad_(False)
    held_out, _ = selection_and_calibration(splits.val.images)
    train = torch.from_numpy(splits.train.images).float() / 255
    seconds = {"vae": time.perf_counter() - started}
    mark = time.perf_counter()
    restorer = restoring_copy(vae, train, epochs, seed)
    for parameter in restorer.parameters():
        parameter.requires_grad_(False)
    seconds["restore"] = time.perf_counter() - mark
    parts = {"vae": vae, "restorer": restorer}
    for name, source in (("head_vae", restorer), ("head_base", vae), ("head_pixels", None)):
        mark = time.perf_counter()
        parts[name] = trained_head(source, train, epochs, seed)
        seconds[name] = time.perf_counter() - mark
    pool = max(3, size // 12) | 1
    scorer = Scorer(vae, fitted.reference, ScoreSpec("patch_and_fused"))
    scores, maps = {}, {}
    found, maps["default"] = score_and_map(scorer, test.images, ("patch_and_fused",))
    scores["default"] = found["patch_and_fused"]
    normal_default = score_and_map(scorer, held_out, ("patch_and_fused",))[0]["patch_and_fused"]
    for method in ("residual", "restore_residual", "head_vae", "head_base", "head_pixels"):
        maps[method] = maps_of(method, parts, test.images).numpy()
        scores[method] = pooled_max(torch.from_numpy(maps[method]), pool)
    normal_head = pooled_max(maps_of("head_vae", parts, held_out), pool)
    scores["default+head_vae"] = (standardised(scores["default"], normal_default)
                                  + standardised(scores["head_vae"], normal_head)) / 2  # fmt: skip
    result = {"folder": folder, "size": size, "epochs": epochs, "seed": seed, "pool": pool,
              "train_images": len(train),
              **scored_methods(test, scores, maps, METHODS, DIFFERENCES)}  # fmt: skip
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    result["seconds"]["total"] = round(time.perf_counter() - started, 1)
    return result


def table(path: str) -> str:
    header = " | ".join([*METHODS, *(f"{a} - {b}" for a, b in DIFFERENCES)])
    rule = "|---|---:|" + "---:|" * len(METHODS) + "---|" * len(DIFFERENCES) + "---:|"
    lines = [f"| folder | size | {header} | seconds |", rule]
    for row in read_rows(path):
        cells = [auc_cell(row["methods"][method]) for method in METHODS]
        diffs = [interval_cell(row["differences"][f"{a} - {b}"]) for a, b in DIFFERENCES]
        name = row["folder"].rstrip("/").split("/")[-1]
        lines.append(f"| {name} | {row['size']} | " + " | ".join(cells + diffs)
                     + f" | {row['seconds']['total']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = folder_parser()
    parser.add_argument("--epochs", type=int, default=15, help="of the restorer and each head")
    parser.add_argument("--seed", type=int, default=0)
    results_main(parser, lambda a: [run(a.folder, a.size, a.epochs, a.seed)], table)


if __name__ == "__main__":
    main()
