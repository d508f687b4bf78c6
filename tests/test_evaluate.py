"""Likelihood estimates and figures."""

import pytest
import torch
from PIL import Image

from convvae.uses.evaluation import (
    likelihood_metrics,
    reconstruct,
    sample_images,
    save_latent_plot,
    save_reconstruction_grid,
    save_sample_grid,
)


def test_likelihood_metrics_are_means_of_the_one_estimator(trained, val_images):
    metrics = likelihood_metrics(trained, val_images, k=32, seed=0)
    assert metrics["test_images"] == len(val_images) and metrics["iwae_samples"] == 32
    total = metrics["test_recon_nll"] + metrics["test_kl"]
    assert metrics["test_neg_elbo"] == pytest.approx(total, rel=1e-9)
    # More samples tighten the bound on -log p(x): lower NLL than the ELBO.
    assert metrics["test_iwae_nll"] < metrics["test_neg_elbo"] - 0.5
    assert likelihood_metrics(trained, val_images, k=32, seed=0) == metrics


def test_reconstructions_resemble_their_inputs_more_than_others(trained, val_images):
    x = val_images[:32].float() / 255
    recon = reconstruct(trained, val_images[:32])
    own = (recon - x).pow(2).mean()
    shuffled = (recon - x.roll(1, dims=0)).pow(2).mean()
    assert own < shuffled
    samples = sample_images(trained, 16, seed=0)
    assert samples.shape == (16, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1


def test_figures_are_written_as_png(trained, mnist_slice, tmp_path):
    save_sample_grid(trained, 16, tmp_path / "samples.png")
    save_reconstruction_grid(
        trained, torch.from_numpy(mnist_slice.test.images[:16]), tmp_path / "r.png"
    )
    save_latent_plot(
        trained,
        torch.from_numpy(mnist_slice.test.images),
        mnist_slice.test.labels,
        [str(c) for c in range(10)],
        tmp_path / "latent.png",
    )
    with Image.open(tmp_path / "samples.png") as grid:
        assert grid.size == (4 * 30 + 2, 4 * 30 + 2)  # 4x4 tiles of 28 px, 2 px padding
    with Image.open(tmp_path / "r.png") as grid:
        assert grid.size == (8 * 30 + 2, 4 * 30 + 2)  # 2 originals rows + 2 reconstruction rows
    assert (tmp_path / "latent.png").stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latent.png", "r.png", "samples.png"]
