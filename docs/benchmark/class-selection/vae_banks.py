"""Can what the VAE learned beat the VAE-free unit-pixel distance (``cosine_knn``) on the class
benchmark? Candidates that use the trained model, scored on held-out *validation* images only
(the protocol of ../degenerate-selection/select_fusion.py: the selection half of class c's
validation images as normal, up to 3,000 validation images of the other classes as anomalies;
no test image is loaded):

- ``cosine_knn`` (5th neighbour) and ``cos_k1`` (1st): the VAE-free references;
- ``dens10`` / ``interp5`` / ``recbank``: the same unit-pixel search, its bank grown by images
  the VAE makes: 10 decoded posterior samples per training image, decoded interpolations between
  each training image's 5 nearest posterior means, or the training images' reconstructions
  (``_k1``: 1st neighbour). The VAE fills the gaps between 350 training digits;
- ``rec_cos``: 1 - cosine between the image and its reconstruction; ``recspace_knn``: the unit
  search among reconstructions; ``mu_knn``: the 5th neighbour among posterior means;
- fusions of standardised parts (``cos+exc``: ``cosine_knn`` and the deviance ``excess_nll``;
  ``fused4``: the default's four parts, standardised here on the normal selection images).

One class model per class (the benchmark's recipe, seed 0). One JSON line per class in OUT.

    PYTHONPATH=src python docs/benchmark/class-selection/vae_banks.py mnist-5k OUT.jsonl
"""

import json
import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, "docs/benchmark/degenerate-selection")
from select_fusion import MAX_ANOMALIES, stats_knn  # noqa: E402

from convvae.anomaly.fit import train_and_fit  # noqa: E402
from convvae.anomaly.knn import knn_distance  # noqa: E402
from convvae.anomaly.scorer import Scorer  # noqa: E402
from convvae.anomaly.scores import ScoreSpec  # noqa: E402
from convvae.anomaly.scoring import every_score  # noqa: E402
from convvae.benchmark.oneclass import class_images  # noqa: E402
from convvae.config import DataConfig, load_params  # noqa: E402
from convvae.data.splits import load_configured, selection_and_calibration  # noqa: E402


def unit(images: np.ndarray) -> torch.Tensor:
    flat = images.reshape(len(images), -1).astype(np.float64)
    return torch.from_numpy(flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-12))


@torch.no_grad()
def reconstruct(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoded means from the posterior means, the posterior means and log-variances."""
    mu, logvar = model.encode(torch.from_numpy(images).float() / 255)
    return model.decode_mean(mu).numpy(), mu.numpy(), logvar.numpy()


@torch.no_grad()
def posterior_samples(model, mu, logvar, per_image: int, rng) -> np.ndarray:
    std = np.exp(0.5 * np.repeat(logvar, per_image, 0))
    z = np.repeat(mu, per_image, 0) + std * rng.standard_normal((len(mu) * per_image, mu.shape[1]))
    return model.decode_mean(torch.from_numpy(z).float()).numpy()


@torch.no_grad()
def interpolations(model, mu, neighbours: int, rng) -> np.ndarray:
    sq = ((mu[:, None] - mu[None]) ** 2).sum(-1)
    np.fill_diagonal(sq, np.inf)
    nearest = np.argsort(sq, 1)[:, :neighbours]
    first = np.repeat(np.arange(len(mu)), neighbours)
    second = nearest.reshape(-1)
    share = rng.uniform(0.2, 0.8, (len(first), 1))
    z = mu[first] * share + mu[second] * (1 - share)
    return model.decode_mean(torch.from_numpy(z).float()).numpy()


def candidate_scores(model, train, sets, rng) -> dict[str, dict[str, np.ndarray]]:
    """Raw scores of the VAE-made candidates per set ({"normal": ..., "anomalies": ...})."""
    train_recon, train_mu, train_logvar = reconstruct(model, train)
    base = unit(train)
    banks = {
        "dens10": torch.cat(
            [base, unit(posterior_samples(model, train_mu, train_logvar, 10, rng))]
        ),
        "interp5": torch.cat([base, unit(interpolations(model, train_mu, 5, rng))]),
        "recbank": torch.cat([base, unit(train_recon)]),
    }
    raw = {}
    for name, images in sets.items():
        recon, mu, _ = reconstruct(model, images)
        query = unit(images)
        scores = {"cos_k1": knn_distance(query, base, 1).numpy()}
        for bank_name, bank in banks.items():
            scores[bank_name] = knn_distance(query, bank, 5).numpy()
            scores[bank_name + "_k1"] = knn_distance(query, bank, 1).numpy()
        scores["rec_cos"] = 1 - (query * unit(recon)).sum(1).numpy()
        scores["recspace_knn"] = knn_distance(unit(recon), unit(train_recon), 5).numpy()
        scores["mu_knn"] = knn_distance(
            torch.from_numpy(mu).double(), torch.from_numpy(train_mu).double(), 5
        ).numpy()
        raw[name] = scores
    return raw


def class_sets(splits, c: int, rng) -> tuple[np.ndarray, ...]:
    """Class c's training and validation images, the selection half of the latter (the normal
    images scored) and up to MAX_ANOMALIES validation images of the other classes."""
    train = class_images(splits.train, c, "training")
    val = class_images(splits.val, c, "validation")
    selection, _ = selection_and_calibration(val)
    others = splits.val.images[splits.val.labels != c]
    return train, val, selection, others[rng.permutation(len(others))[:MAX_ANOMALIES]]


def run_class(params, splits, c: int) -> dict:
    rng = np.random.default_rng(c)
    train, val, selection, others = class_sets(splits, c, rng)
    started = time.perf_counter()
    fitted = train_and_fit(params.model, params.benchmark_train(0), params.anomaly, train, val,
                           log=lambda line: None)  # fmt: skip
    model = fitted.training.model.eval()
    scorer = Scorer(model, fitted.reference, ScoreSpec("fused", 8, 0))
    sets = {"normal": selection, "anomalies": others}
    raw = {
        n: every_score(scorer, x, ("excess_nll", "hidden_knn", "cosine_knn"))
        for n, x in sets.items()
    }
    for name, extra in candidate_scores(model, train, sets, rng).items():
        raw[name] |= extra | {"contrast": stats_knn(train, sets[name])}
    z = {name: {} for name in raw}
    for part, normal in raw["normal"].items():
        for name in raw:
            z[name][part] = (raw[name][part] - normal.mean()) / (normal.std() + 1e-12)
    for parts in z.values():
        parts["cos+exc"] = (parts["cosine_knn"] + parts["excess_nll"]) / 2
        parts["cos+exc+con"] = (parts["cosine_knn"] + parts["excess_nll"] + parts["contrast"]) / 3
        parts["fused4"] = (
            sum(parts[p] for p in ("cosine_knn", "excess_nll", "hidden_knn", "contrast")) / 4
        )
        parts["dens+exc"] = (parts["dens10"] + parts["excess_nll"]) / 2
        parts["interp+exc"] = (parts["interp5"] + parts["excess_nll"]) / 2
        parts["cos+rec_cos"] = (parts["cosine_knn"] + parts["rec_cos"]) / 2
    labels = np.r_[np.zeros(len(selection)), np.ones(len(others))]
    auc = {
        part: float(roc_auc_score(labels, np.r_[z["normal"][part], z["anomalies"][part]]))
        for part in z["normal"]
    }
    return {"class": c, "seconds": time.perf_counter() - started, "auc": auc}


def main() -> None:
    source, out = sys.argv[1], sys.argv[2]
    params = load_params("params.yaml")
    _, splits = load_configured(DataConfig(source=source))
    for c in range(10):
        result = {"source": source, **run_class(params, splits, c)}
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(c, round(result["seconds"]), {k: round(100 * v, 1) for k, v in result["auc"].items()})


if __name__ == "__main__":
    main()
