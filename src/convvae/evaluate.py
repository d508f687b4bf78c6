"""Held-out likelihood (negative ELBO, IWAE bound) and figures of a trained ConvVAE.

Likelihoods are Bernoulli on grey levels in [0, 1] (not binarised pixels), in nats per image;
they are not comparable to the binarised-MNIST figures in the literature.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from convvae.files import atomic_path
from convvae.model import ConvVAE, elbo_terms
from convvae.train import to_unit_interval


@torch.no_grad()
def per_image_neg_elbo(
    model: ConvVAE, images: torch.Tensor, batch_size: int = 256, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-sample ELBO terms per image with seeded noise (deterministic).

    images: uint8 (N, C, H, W). Returns (recon_nll, kl), each float64 (N,) in nats.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    recon_parts, kl_parts = [], []
    for start in range(0, len(images), batch_size):
        x = to_unit_interval(images[start : start + batch_size])
        logits, mu, logvar = model(x, generator)
        recon, kl = elbo_terms(logits, x, mu, logvar)
        recon_parts.append(recon.double())
        kl_parts.append(kl.double())
    return torch.cat(recon_parts), torch.cat(kl_parts)


@torch.no_grad()
def per_image_iwae_nll(
    model: ConvVAE, images: torch.Tensor, k: int = 64, batch_size: int = 64, seed: int = 0
) -> torch.Tensor:
    """Importance-weighted estimate of -log p(x) with k samples (Burda et al., 2016).

    -log p(x) <= -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x); tighter than -ELBO, equal at k=1.
    images: uint8 (N, C, H, W). Returns float64 (N,) in nats.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    results = []
    for start in range(0, len(images), batch_size):
        x = to_unit_interval(images[start : start + batch_size])
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        log_weights = []
        for _ in range(k):
            eps = torch.randn(mu.shape, generator=generator)
            z = mu + std * eps
            logits = model.decode(z)
            log_px_z = (
                -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
                .flatten(1)
                .sum(1)
            )
            log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(1)
            log_qz_x = -0.5 * (eps.pow(2) + logvar + math.log(2 * math.pi)).sum(1)
            log_weights.append((log_px_z + log_pz - log_qz_x).double())
        log_px = torch.logsumexp(torch.stack(log_weights), dim=0) - math.log(k)
        results.append(-log_px)
    return torch.cat(results)


@torch.no_grad()
def sample_images(model: ConvVAE, n: int, seed: int = 0, temperature: float = 1.0) -> torch.Tensor:
    """n images decoded from z ~ N(0, temperature² I): Bernoulli means, float (n, C, H, W)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.arch.latent_dim, generator=generator) * temperature
    return torch.sigmoid(model.decode(z))


@torch.no_grad()
def reconstruct(model: ConvVAE, images: torch.Tensor) -> torch.Tensor:
    """Decoded posterior means: uint8 (N, C, H, W) → Bernoulli means, float (N, C, H, W)."""
    model.eval()
    mu, _ = model.encode(to_unit_interval(images))
    return torch.sigmoid(model.decode(mu))


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

    model.eval()
    mu = torch.cat(
        [model.encode(to_unit_interval(images[i : i + 512]))[0] for i in range(0, len(images), 512)]
    )
    points = mu.numpy()
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
