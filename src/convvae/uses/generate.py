"""Generation: samples and latent walks, and a sample-quality score that needs no download.

The score is the Fréchet distance (Heusel et al. 2017) between two sets of images in the feature
space of a small CNN classifier trained here on the same training split, in place of the
Inception network of FID (which needs a download and suits natural images, not 28x28 digits).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from convvae.data.images import to_unit_interval
from convvae.model.vae import ConvVAE
from convvae.uses.evaluation import sample_images


@torch.no_grad()
def interpolate(
    model: ConvVAE, image_a: torch.Tensor, image_b: torch.Tensor, steps: int
) -> torch.Tensor:
    """A straight walk between the posterior means of two images, decoded.

    image_a, image_b: uint8 or [0, 1] float (C, H, W). Returns Bernoulli means, float
    (steps, C, H, W); the first and last rows are the reconstructions of a and b.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    model.eval()
    mu, _ = model.encode(to_unit_interval(torch.stack([image_a, image_b])))
    weights = torch.linspace(0, 1, steps)[:, None]
    z = (1 - weights) * mu[0] + weights * mu[1]
    return model.decode_mean(z)


class DigitClassifier(nn.Module):
    """Two stride-2 convolutions and a 64-d feature layer; the features feed the Fréchet
    distance, the class logits train them."""

    feature_dim = 64

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int) -> None:
        super().__init__()
        channels, size, _ = image_shape
        side = ((size + 1) // 2 + 1) // 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(32 * side * side, self.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(self.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] → class logits (B, n_classes)."""
        return self.head(self.features(x))


def train_classifier(
    images: torch.Tensor, labels: np.ndarray, epochs: int = 3, batch_size: int = 128, seed: int = 0
) -> DigitClassifier:
    """Adam on cross-entropy, seeded. images: uint8 (N, C, H, W); labels: int (N,) from 0."""
    torch.manual_seed(seed)
    targets = torch.as_tensor(labels, dtype=torch.long)
    classifier = DigitClassifier(tuple(images.shape[1:]), int(targets.max()) + 1)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(to_unit_interval(images[batch])), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return classifier.eval()


@torch.no_grad()
def classifier_accuracy(
    classifier: DigitClassifier, images: torch.Tensor, labels: np.ndarray
) -> float:
    """Fraction of images (uint8 or [0, 1] float (N, C, H, W)) classified as their label."""
    predicted = classifier(to_unit_interval(images)).argmax(1).numpy()
    return float((predicted == np.asarray(labels)).mean())


@torch.no_grad()
def classifier_features(
    classifier: DigitClassifier, images: torch.Tensor, batch_size: int = 512
) -> np.ndarray:
    """Feature-layer activations, float64 (N, 64); images uint8 or [0, 1] float (N, C, H, W)."""
    parts = [
        classifier.features(to_unit_interval(images[start : start + batch_size]))
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(parts).double().numpy()


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F):

    |mu_a - mu_b|² + tr(S_a + S_b - 2 (S_a S_b)^½), in squared feature units; 0 for equal sets.
    """
    if features_a.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature sets differ in shape: {features_a.shape}, {features_b.shape}")
    if min(len(features_a), len(features_b)) < 2:
        raise ValueError("each feature set needs at least 2 rows for a covariance")
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a = np.cov(features_a, rowvar=False)
    cov_b = np.cov(features_b, rowvar=False)
    with warnings.catch_warnings():
        # Dead ReLU features make the covariances singular; their square root is still defined
        # (zero on those directions), so scipy's "singular matrix" warning is noise here.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
    # Round-off gives the square root a tiny imaginary part; the distance is the real part.
    root = np.real(root)
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    return float(max(distance, 0.0))


def sample_quality(
    model: ConvVAE,
    train: tuple[torch.Tensor, np.ndarray],
    test: tuple[torch.Tensor, np.ndarray],
    classifier_epochs: int = 3,
    seed: int = 0,
) -> dict[str, float | int]:
    """Fréchet distance of prior samples to held-out images, and its floor from real images.

    train, test: (uint8 images (N, C, H, W), int labels (N,)). The classifier learns on train;
    the test split is cut in two halves A and B: the score compares |A| samples with A, the
    floor compares B with A (same sizes, so the sample-size bias of the estimate is shared).
    """
    classifier = train_classifier(*train, epochs=classifier_epochs, seed=seed)
    images, labels = test
    half = len(images) // 2
    reference = classifier_features(classifier, images[:half])
    samples = classifier_features(classifier, sample_images(model, half, seed=seed))
    real = classifier_features(classifier, images[half : 2 * half])
    return {
        "frechet_distance_samples": frechet_distance(samples, reference),
        "frechet_distance_real_floor": frechet_distance(real, reference),
        "frechet_images": half,
        "classifier_test_accuracy": classifier_accuracy(classifier, images, labels),
        "classifier_epochs": classifier_epochs,
    }
