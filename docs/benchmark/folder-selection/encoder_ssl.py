"""Does a self-supervised head on the encoder make the VAE the reason? (issue 26, item 3, its
last untried recipe), on selection folders only.

Per folder: one model with every default (30 epochs at most, as the other selection scripts).
Then two copies of it fine-tuned for ``--epochs`` more on the folder's normal training images:

- ``elbo_ft``: the ELBO only (the control: as much training, no new objective);
- ``ssl``: the ELBO on the clean images plus a segmentation loss: each image is corrupted as
  vae_head.py corrupts it (DRAEM's recipe with the folder's own images as texture: a smooth
  random mask, filled with another training image turned, flipped, inverted or re-contrasted,
  or with a smooth colour field, blended at an opacity of 0.2-1; about half the images left
  clean), and a small head reads the encoder's first two convolutions (the second upsampled
  to the first's grid; a 1x1 then a 3x3 convolution, about 3,000 parameters) and must mark
  the corrupted pixels (cross-entropy plus Dice, per pixel, times the image's pixel count so
  it weighs like the ELBO's sum over pixels, times ``--weight``). The encoder's convolutions
  get the head's gradients: the features themselves are taught what an anomaly looks like.
  None of the corruptions is a test defect's generator.

Each network (``elbo``: the default model; ``elbo_ft``; ``ssl``; ``untrained``: the network
our training starts from) gets its reference fitted as the pipeline fits it
(``fit_reference``) and is scored with the folder default, ``patch_and_fused`` (its map: the
first convolution's patch distances), and with the two-layer patch map (``conv1+conv2``, as
multiscale_patches.py builds it). ``ssl_head``: the head's own map (mean over the pool x pool
window, maximum, as vae_head.py scores). The validation negative ELBO (nats per image, one
posterior sample, the calibration half of the validation images) says whether the likelihood
and the other uses survive the new objective.

Prints and appends one JSON line per folder: image and pixel ROC-AUC per method, paired
bootstrap intervals of image ROC-AUC differences, validation ELBOs, seconds.

    PYTHONPATH=src python docs/benchmark/folder-selection/encoder_ssl.py FOLDER SIZE --out F
    python docs/benchmark/folder-selection/encoder_ssl.py --table F   # the README's table
"""

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convvae.anomaly.fit import fit_reference, train_and_fit
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import score_and_map
from convvae.benchmark.ablations import untrained_model
from convvae.config import parse_params
from convvae.data.splits import load_configured, selection_and_calibration
from convvae.model.vae import elbo_terms

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from folder_runs import (  # noqa: E402
    auc_cell,
    folder_parser,
    interval_cell,
    read_rows,
    results_main,
    scored_methods,
)
from multiscale_patches import extractor, maps_and_scores  # noqa: E402
from vae_head import corrupted, pooled_max  # noqa: E402

NETWORKS = ("elbo", "elbo_ft", "ssl", "untrained")
METHODS = (*(f"{n} default" for n in NETWORKS), *(f"{n} conv1+conv2" for n in NETWORKS),
           "ssl_head")  # fmt: skip
DIFFERENCES = (
    ("ssl default", "elbo default"),
    ("ssl default", "elbo_ft default"),
    ("ssl default", "untrained default"),
    ("ssl conv1+conv2", "elbo_ft conv1+conv2"),
    ("ssl conv1+conv2", "untrained conv1+conv2"),
)
BATCH = 32


class EncoderHead(nn.Module):
    """conv1 features beside conv2's (upsampled) → one logit per conv1 cell, upsampled to
    the image: small, so the encoder's features must carry the evidence."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, width, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, 1, 3, padding=1))  # fmt: skip

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.body(features), size, mode="bilinear", align_corners=False)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    probs = torch.sigmoid(logits)
    dice = 1 - (2 * (probs * masks).sum() + 1) / (probs.sum() + masks.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, masks) + dice


def fine_tuned(vae, images: torch.Tensor, epochs: int, seed: int, weight: float, head_lr: float):
    """A copy of ``vae`` trained ``epochs`` more on its ELBO (Adam, 3e-4), plus, where
    ``weight`` > 0, the encoder head's segmentation loss on corrupted copies (the head's own
    learning rate ``head_lr``); returns (copy, head or None, the last epoch's mean
    segmentation loss or None)."""
    vae = copy.deepcopy(vae).train()
    for parameter in vae.parameters():
        parameter.requires_grad_(True)
    features = extractor(vae, "conv1+conv2")
    head, groups = None, [{"params": list(vae.parameters())}]
    if weight > 0:
        torch.manual_seed(seed)
        head = EncoderHead(features(images[:1]).shape[1])
        groups.append({"params": list(head.parameters()), "lr": head_lr})
    optimizer = torch.optim.Adam(groups, lr=3e-4)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    pixels = images.shape[-2] * images.shape[-1]
    for _ in range(epochs):
        segmentation = []
        for batch in images[torch.randperm(len(images), generator=generator)].split(BATCH):
            out, mu, logvar = vae(batch, generator)
            nll, kl = elbo_terms(out, batch, mu, logvar, vae.arch.likelihood)
            loss = (nll + kl).mean()
            if head is not None:
                odd, masks = corrupted(batch, rng)
                logits = head(features(odd), batch.shape[-2:])
                part = segmentation_loss(logits, masks)
                segmentation.append(float(part.detach()))
                loss = loss + weight * pixels * part
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for parameter in vae.parameters():
        parameter.requires_grad_(False)
    if head is None:
        return vae.eval(), None, None
    return vae.eval(), head.eval(), float(np.mean(segmentation))


@torch.no_grad()
def validation_elbo(vae, images: np.ndarray, seed: int) -> float:
    """Mean negative ELBO, nats per image, one posterior sample per image."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for batch in torch.from_numpy(images).split(128):
        x = batch.float() / 255
        out, mu, logvar = vae(x, generator)
        nll, kl = elbo_terms(out, x, mu, logvar, vae.arch.likelihood)
        total += float((nll + kl).sum())
    return total / len(images)


@torch.no_grad()
def head_maps(vae, head: EncoderHead, images: np.ndarray) -> np.ndarray:
    features = extractor(vae, "conv1+conv2")
    found = []
    for batch in torch.from_numpy(images).split(64):
        x = batch.float() / 255
        found.append(torch.sigmoid(head(features(x), x.shape[-2:]))[:, 0])
    return torch.cat(found).numpy()


def run(folder: str, size: int, epochs: int, seed: int, weight: float, head_lr: float) -> dict:
    started = time.perf_counter()
    data = {"source": "folder", "path": folder, "image_size": size}
    params = parse_params({"data": data, "train": {"epochs": 30, "seed": seed}})
    _, splits = load_configured(params.data)
    fitted = train_and_fit(params.model, params.train, params.anomaly, splits.train.images,
                           splits.val.images, log=lambda line: None)  # fmt: skip
    selection, calibration = selection_and_calibration(splits.val.images)
    seconds = {"vae": time.perf_counter() - started}
    train = torch.from_numpy(splits.train.images).float() / 255
    networks = {"elbo": fitted.training.model.eval()}
    mark = time.perf_counter()
    networks["elbo_ft"], _, _ = fine_tuned(networks["elbo"], train, epochs, seed, 0, head_lr)
    seconds["elbo_ft"] = time.perf_counter() - mark
    mark = time.perf_counter()
    networks["ssl"], head, last_loss = fine_tuned(networks["elbo"], train, epochs, seed, weight,
                                                  head_lr)  # fmt: skip
    seconds["ssl"] = time.perf_counter() - mark
    shape = splits.train.images.shape[1:]
    networks["untrained"] = untrained_model(params.model, shape, params.train.seed)
    test = splits.test
    scores, maps = {}, {}
    for name, vae in networks.items():
        reference = fitted.reference if name == "elbo" else fit_reference(
            vae, splits.train.images, selection, params.anomaly.samples,
            params.anomaly.noise_seed)  # fmt: skip
        scorer = Scorer(vae, reference, ScoreSpec("patch_and_fused"))
        found, maps[f"{name} default"] = score_and_map(scorer, test.images, ("patch_and_fused",))
        scores[f"{name} default"] = found["patch_and_fused"]
        layered = f"{name} conv1+conv2"
        maps[layered], scores[layered] = maps_and_scores(
            vae, "conv1+conv2", splits.train.images, test.images
        )
    maps["ssl_head"] = head_maps(networks["ssl"], head, test.images)
    scores["ssl_head"] = pooled_max(torch.from_numpy(maps["ssl_head"]), max(3, size // 12) | 1)
    result = {"folder": folder, "size": size, "epochs": epochs, "seed": seed, "weight": weight,
              "head_lr": head_lr, "segmentation_loss": last_loss, "train_images": len(train),
              **scored_methods(test, scores, maps, METHODS, DIFFERENCES),
              "validation_neg_elbo": {name: validation_elbo(networks[name], calibration, seed)
                                      for name in ("elbo", "elbo_ft", "ssl")}}  # fmt: skip
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    result["seconds"]["total"] = round(time.perf_counter() - started, 1)
    return result


def table(path: str) -> str:
    header = " | ".join([*METHODS, *(f"{a} - {b}" for a, b in DIFFERENCES)])
    rule = "|---|---:|---|" + "---:|" * len(METHODS) + "---|" * len(DIFFERENCES) + "---|"
    elbos = "validation -ELBO (elbo, elbo_ft, ssl)"
    lines = [f"| folder | size | seed, epochs, weight, head lr | {header} | {elbos} | "
             "segmentation loss, last epoch |", rule + "---:|"]  # fmt: skip
    for row in read_rows(path):
        cells = [auc_cell(row["methods"][method]) for method in METHODS]
        cells += [interval_cell(row["differences"][f"{a} - {b}"]) for a, b in DIFFERENCES]
        elbo = row["validation_neg_elbo"]
        elbos = ", ".join(f"{elbo[name]:.0f}" for name in ("elbo", "elbo_ft", "ssl"))
        name = row["folder"].rstrip("/").split("/")[-1]
        run = f"{row['seed']}, {row['epochs']}, {row['weight']:g}, {row.get('head_lr', 3e-4):g}"
        loss = row.get("segmentation_loss")
        loss = "" if loss is None else f"{loss:.3f}"
        lines.append(f"| {name} | {row['size']} | {run} | " + " | ".join(cells)
                     + f" | {elbos} | {loss} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = folder_parser()
    parser.add_argument("--epochs", type=int, default=15, help="of each fine-tuned copy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight", type=float, default=1.0, help="of the segmentation loss")
    parser.add_argument("--head-lr", type=float, default=3e-4, help="the head's learning rate")
    results_main(
        parser, lambda a: [run(a.folder, a.size, a.epochs, a.seed, a.weight, a.head_lr)], table
    )


if __name__ == "__main__":
    main()
