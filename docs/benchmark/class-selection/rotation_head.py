"""A transformation-prediction head on the VAE's encoder (GEOM-style self-supervision, issue 26
item 3) against the VAE-free unit-pixel distance, on held-out *validation* images only (the
protocol of vae_banks.py: the selection half of class c's validation images as normal, up to
3,000 validation images of the other classes as anomalies; no test image is loaded).

The head (one linear layer on the encoder's last hidden layer) learns which of 8 transformations
(rotations by 0/90/180/270 degrees, with and without a horizontal flip) an image went through;
the score is the summed negative log-probability of the right transformation over the 8. After
the benchmark's class model (seed 0), three variants are fine-tuned for --epochs epochs (Adam,
1e-3, batches of 64 images, all 8 transformations of each):

- ``vae+rot``: a copy of the trained VAE, on its ELBO plus the head's cross-entropy;
- ``rot_only_from_vae``: a copy of the trained VAE, on the cross-entropy alone;
- ``rot_scratch``: an untrained network of the same shape, on the cross-entropy alone (GEOM's
  classifier with our encoder: the control that needs no VAE);

each alone and each averaged with ``cosine`` (the 5th-neighbour unit-pixel distance), both
standardised on the normal selection images. One JSON line per class in OUT.

    PYTHONPATH=src python docs/benchmark/class-selection/rotation_head.py mnist-5k OUT.jsonl 15
"""

import copy
import json
import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from vae_banks import class_sets, unit

from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.knn import knn_distance
from convvae.config import DataConfig, load_params
from convvae.data.splits import load_configured
from convvae.model.vae import ConvVAE, elbo_terms

TRANSFORMS = 8


def transformed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 transformations of a batch (8B, C, H, W), and each row's transformation."""
    outs = []
    for flip in (False, True):
        y = torch.flip(x, (-1,)) if flip else x
        outs += [torch.rot90(y, quarter, (-2, -1)) for quarter in range(4)]
    return torch.cat(outs), torch.arange(TRANSFORMS).repeat_interleave(len(x))


def finetune(model, head, train: np.ndarray, epochs: int, with_elbo: bool, seed: int) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam([*head.parameters(), *model.parameters()], lr=1e-3)
    images = torch.from_numpy(train).float() / 255
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for start in range(0, len(images), 64):
            x = images[order[start : start + 64]]
            xt, labels = transformed(x)
            loss = nn.functional.cross_entropy(head(model.encoder(xt)), labels)
            if with_elbo:
                logits, mu, logvar = model(x)
                recon, kl = elbo_terms(
                    logits, x, mu, logvar, model.arch.likelihood, pixels_checked=True
                )
                loss = loss + (recon + kl).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def transformation_nll(model, head, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).float() / 255
    xt, labels = transformed(x)
    log_p = torch.log_softmax(head(model.encoder(xt)), 1)
    return -log_p[torch.arange(len(labels)), labels].reshape(TRANSFORMS, len(x)).sum(0).numpy()


def run_class(params, splits, c: int, epochs: int) -> dict:
    train, val, selection, others = class_sets(splits, c, np.random.default_rng(c))
    started = time.perf_counter()
    fitted = train_and_fit(params.model, params.benchmark_train(0), params.anomaly, train, val,
                           log=lambda line: None)  # fmt: skip
    trained = fitted.training.model
    sets = {"normal": selection, "anomalies": others}
    raw = {name: {} for name in sets}
    variants = {
        "vae+rot": (copy.deepcopy(trained), True),
        "rot_only_from_vae": (copy.deepcopy(trained), False),
        "rot_scratch": (ConvVAE(trained.arch), False),
    }
    for variant, (model, with_elbo) in variants.items():
        torch.manual_seed(c)
        head = nn.Linear(model.arch.encoder_hidden[-1], TRANSFORMS)
        finetune(model, head, train, epochs, with_elbo, c)
        for name, images in sets.items():
            raw[name][variant] = transformation_nll(model, head, images)
    for name, images in sets.items():
        raw[name]["cosine"] = knn_distance(unit(images), unit(train), 5).numpy()
    z = {name: {} for name in raw}
    for part, normal in raw["normal"].items():
        for name in raw:
            z[name][part] = (raw[name][part] - normal.mean()) / (normal.std() + 1e-12)
    for parts in z.values():
        for variant in variants:
            parts[f"cos+{variant}"] = (parts["cosine"] + parts[variant]) / 2
    labels = np.r_[np.zeros(len(selection)), np.ones(len(others))]
    auc = {
        part: float(roc_auc_score(labels, np.r_[z["normal"][part], z["anomalies"][part]]))
        for part in z["normal"]
    }
    return {"class": c, "epochs": epochs, "seconds": time.perf_counter() - started, "auc": auc}


def main() -> None:
    source, out, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    params = load_params("params.yaml")
    _, splits = load_configured(DataConfig(source=source))
    for c in range(10):
        result = run_class(params, splits, c, epochs) | {"source": source}
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(c, round(result["seconds"]), {k: round(100 * v, 1) for k, v in result["auc"].items()})


if __name__ == "__main__":
    main()
