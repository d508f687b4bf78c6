"""Held-out likelihood (negative ELBO, IWAE bound) and figures of a trained ConvVAE.

Likelihoods are the model's (``model.likelihood``; Bernoulli on grey levels in [0, 1] by default,
not binarised pixels), in nats per image; the Bernoulli figures are not comparable to the
binarised-MNIST ones in the literature. A discretized logistic also gives bits per dimension.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.config import EvaluateConfig
from convvae.data.images import images_per_batch, to_unit_interval
from convvae.data.sources import LabelledImages
from convvae.model.likelihood import bits_per_dim
from convvae.model.vae import ConvVAE
from convvae.runtime.files import atomic_path


def likelihood_metrics(model: ConvVAE, images: np.ndarray, k: int, seed: int = 0) -> dict:
    """Mean test negative ELBO (with its reconstruction and KL terms) and IWAE NLL over
    uint8 images (N, C, H, W), in nats per image, from the scorer's likelihood terms with ``k``
    importance samples (noise seed ``seed``)."""
    scorer = Scorer(model, None, ScoreSpec("iwae_nll", k, seed))
    terms = every_score(scorer, images, ("neg_elbo", "recon_nll", "kl", "iwae_nll"))
    likelihood = model.arch.likelihood
    discrete = {}
    if likelihood == "discretized_logistic":  # a probability of the 8-bit image: bits/dim
        dims = math.prod(model.arch.image_shape)
        discrete["test_bits_per_dim"] = bits_per_dim(float(terms["iwae_nll"].mean()), dims)
    return {
        "likelihood": f"{likelihood} on pixel values in [0, 1], nats per image",
        "test_images": len(images),
        "test_neg_elbo": float(terms["neg_elbo"].mean()),
        "test_recon_nll": float(terms["recon_nll"].mean()),
        "test_kl": float(terms["kl"].mean()),
        "test_iwae_nll": float(terms["iwae_nll"].mean()),
        "iwae_samples": k,
        **discrete,
    }


@torch.no_grad()
def sample_images(model: ConvVAE, n: int, seed: int = 0, temperature: float = 1.0) -> torch.Tensor:
    """n images decoded from z ~ N(0, temperature² I): Bernoulli means, float (n, C, H, W)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.arch.latent_dim, generator=generator) * temperature
    return model.decode_mean(z)


@torch.no_grad()
def posterior_means(model: ConvVAE, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → posterior means (N, D), in batches bounded by pixels."""
    model.eval()
    batch_size = images_per_batch(model.arch.image_shape)
    return torch.cat(
        [model.encode(to_unit_interval(images[start : start + batch_size]))[0]
         for start in range(0, len(images), batch_size)]
    )  # fmt: skip


@torch.no_grad()
def reconstruct(model: ConvVAE, images: torch.Tensor) -> torch.Tensor:
    """Decoded posterior means: uint8 (N, C, H, W) → Bernoulli means, float (N, C, H, W)."""
    model.eval()
    batch_size = images_per_batch(model.arch.image_shape)
    return torch.cat(
        [model.decode_mean(model.encode(to_unit_interval(images[start : start + batch_size]))[0])
         for start in range(0, len(images), batch_size)]
    )  # fmt: skip


def save_sample_grid(model: ConvVAE, n: int, path: str | Path, seed: int = 0) -> None:
    """PNG grid of n samples from the prior."""
    _save_png(make_grid(sample_images(model, n, seed), nrow=int(math.sqrt(n)), pad_value=1), path)


def save_reconstruction_grid(model: ConvVAE, images: torch.Tensor, path: str | Path) -> None:
    """PNG with pairs of rows: originals above their reconstructions (8 per row)."""
    originals = to_unit_interval(images)
    recons = reconstruct(model, images)
    rows = []
    for start in range(0, len(images), 8):
        rows += [originals[start : start + 8], recons[start : start + 8]]
    _save_png(make_grid(torch.cat(rows), nrow=8, pad_value=1), path)


@torch.no_grad()
def save_latent_plot(
    model: ConvVAE,
    images: torch.Tensor,
    labels: np.ndarray,
    class_names: list[str],
    path: str | Path,
) -> None:
    """Scatter of posterior means coloured by label; PCA to 2-D when latent_dim > 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    points = posterior_means(model, images).numpy()
    axes_label = ("z1", "z2")
    if points.shape[1] > 2:
        points = PCA(n_components=2, random_state=0).fit_transform(points)
        axes_label = ("PC 1 of z", "PC 2 of z")
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    scatter = ax.scatter(
        points[:, 0], points[:, 1], c=labels, cmap="tab10", s=4, vmin=-0.5, vmax=9.5
    )
    cbar = fig.colorbar(scatter, ax=ax, ticks=range(len(class_names)))
    cbar.ax.set_yticklabels(class_names)
    ax.set_xlabel(axes_label[0])
    ax.set_ylabel(axes_label[1])
    ax.set_title("Posterior means of test images")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _save_png(grid: torch.Tensor, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        save_image(grid, tmp, format="png")


def save_figures(
    model: ConvVAE,
    test: LabelledImages,
    class_names: list[str],
    cfg: EvaluateConfig,
    folder: Path,
) -> None:
    """samples.png (from the prior), reconstructions.png and latent.png in ``folder``."""
    save_sample_grid(model, cfg.grid_images, folder / "samples.png", seed=cfg.seed)
    images = torch.from_numpy(test.images)
    save_reconstruction_grid(model, images[: cfg.grid_images], folder / "reconstructions.png")
    save_latent_plot(model, images, test.labels, class_names, folder / "latent.png")
