"""Imputation: fill missing pixels with a trained ConvVAE, and two baselines to beat.

The method is the simple fixed-point iteration: start the missing pixels at the training mean,
then repeat encode → decode (posterior mean, no noise) and copy the decoded Bernoulli means into
the missing pixels only, keeping the known ones clamped. Rezende et al. (2014) describe the
Markov-chain version, which samples z and x at each step instead of taking means.

Masks are boolean (N, C, H, W) with True where a pixel is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from convvae.data.images import image_grid, images_per_batch, save_png, to_unit_interval
from convvae.errors import DataError
from convvae.model.vae import ConvVAE

MASK_KINDS = "center | left-half | random:P (0 < P < 1) | a mask PNG (white = missing)"
# BCE of hard 0/1 guesses (nearest neighbour) is infinite where they miss; half a grey level
# from either end keeps every method finite and comparable.
BCE_CLIP = 0.5 / 255


def make_mask(spec: str, n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Missing-pixel mask, bool (n, C, H, W), from a spec (see MASK_KINDS).

    center: the middle square of half the side; left-half: columns left of W/2; random:P: each
    pixel missing with probability P, drawn per image with ``seed``; a PNG path: one 8-bit
    greyscale (or black-and-white) image of the model's height and width holding only 0 (known)
    and 255 (missing), applied to every channel.
    """
    channels, height, width = shape
    mask = torch.zeros(shape, dtype=torch.bool)
    if spec == "center":
        mask[:, height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = (
            True
        )
    elif spec == "left-half":
        mask[:, :, : width // 2] = True
    elif spec.startswith("random:"):
        match = re.fullmatch(r"random:(0?\.\d+)", spec)
        if match is None or not 0 < float(match.group(1)) < 1:
            raise DataError(f"mask {spec!r}: write random:P with 0 < P < 1, e.g. random:0.5")
        generator = torch.Generator().manual_seed(seed)
        return torch.rand((n, *shape), generator=generator) < float(match.group(1))
    elif spec.lower().endswith(".png"):
        mask = _read_mask_png(Path(spec), height, width).expand(shape).clone()
    else:
        raise DataError(f"mask {spec!r}: unknown kind; use {MASK_KINDS}")
    if not mask.any():
        raise DataError(f"mask {spec!r} marks no pixel missing; nothing to impute")
    return mask.expand(n, *shape).clone()


def _read_mask_png(path: Path, height: int, width: int) -> torch.Tensor:
    """A mask PNG as bool (H, W), True where missing; grey or black and white, whatever the
    model's channels (the mask applies to each)."""
    from convvae.data.folder import read_image_file

    if not path.is_file():
        raise DataError(f"{path}: no such file; pass a PNG of 0 (known) and 255 (missing)")
    image = read_image_file(path)
    if image.mode in ("RGB", "P"):  # black and white saved in colour: fine if truly grey
        rgb = np.asarray(image.convert("RGB"))
        if (rgb == rgb[..., :1]).all():
            image = image.convert("L")
    if image.mode not in ("1", "L"):
        raise DataError(
            f"{path}: a mask is one grey channel, this image is mode {image.mode} in colour; "
            "save it as black (known) and white (missing)"
        )
    if image.size != (width, height):
        raise DataError(
            f"{path}: {image.size[0]}x{image.size[1]} pixels, the model expects "
            f"{width}x{height}; masks are not resized"
        )
    pixels = np.asarray(image.convert("L"))
    if not np.isin(pixels, (0, 255)).all():
        raise DataError(
            f"{path}: mask pixels must be 0 (known) or 255 (missing), found "
            f"{len(np.unique(pixels))} grey levels; save it as black and white"
        )
    return torch.from_numpy(pixels == 255)


@torch.no_grad()
def impute(
    model: ConvVAE,
    images: torch.Tensor,
    missing: torch.Tensor,
    fill: torch.Tensor,
    iterations: int = 5,
) -> torch.Tensor:
    """Fixed-point imputation (module docstring).

    images: uint8 (N, C, H, W); missing: bool (N, C, H, W); fill: float (C, H, W) in [0, 1],
    the starting value of missing pixels (the per-pixel training mean). Returns float
    (N, C, H, W) in [0, 1]: the known pixels unchanged, the missing ones imputed.
    """
    model.eval()
    parts, batch_size = [], images_per_batch(model.arch.image_shape)
    for start in range(0, len(images), batch_size):
        known = to_unit_interval(images[start : start + batch_size])
        gaps = missing[start : start + batch_size]
        x = torch.where(gaps, fill, known)
        for _ in range(iterations):
            mu, _ = model.encode(x)
            x = torch.where(gaps, model.decode_mean(mu), known)
        parts.append(x)
    return torch.cat(parts)


def mean_fill(train_images: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean of the training images, float (C, H, W) in [0, 1]."""
    return to_unit_interval(train_images).mean(0)


@torch.no_grad()
def nearest_neighbour_fill(
    train_images: torch.Tensor, images: torch.Tensor, missing: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Copy missing pixels from the training image closest on each image's known pixels.

    Squared distances over known pixels only, for all pairs at once: with w the known-pixel
    weights, sum w (x - t)² = sum w x² - 2 (w x)·t + w·t², two matmuls per batch (this is
    torch.cdist's expansion, extended to a different mask per image). Returns float (N, C, H, W).
    """
    train = to_unit_interval(train_images).flatten(1)
    parts = []
    for start in range(0, len(images), batch_size):
        x = to_unit_interval(images[start : start + batch_size])
        known = (~missing[start : start + batch_size]).float().flatten(1)
        flat = x.flatten(1)
        distances = (known * flat**2).sum(1, keepdim=True) - 2 * (known * flat) @ train.T
        distances += known @ (train**2).T
        neighbours = train[distances.argmin(1)].view_as(x)
        parts.append(torch.where(missing[start : start + batch_size], neighbours, x))
    return torch.cat(parts)


def missing_pixel_errors(
    filled: torch.Tensor, images: torch.Tensor, missing: torch.Tensor
) -> dict[str, float]:
    """Errors on the missing pixels only, against the true uint8 images (N, C, H, W).

    Returns {"mse": mean squared error per missing pixel on [0, 1], "bce_nats": binary
    cross-entropy per missing pixel in nats, guesses clipped to [BCE_CLIP, 1 - BCE_CLIP]}.
    """
    truth = to_unit_interval(images)[missing]
    guess = filled[missing]
    return {
        "mse": F.mse_loss(guess, truth).item(),
        "bce_nats": F.binary_cross_entropy(guess.clamp(BCE_CLIP, 1 - BCE_CLIP), truth).item(),
    }


def save_imputation_grid(
    images: torch.Tensor, missing: torch.Tensor, filled: torch.Tensor, path: str | Path
) -> None:
    """PNG with three rows per group of up to 8 images: masked (missing pixels mid-grey),
    imputed, truth. images uint8, missing bool, filled float, all (N, C, H, W)."""
    truth = to_unit_interval(images)
    masked = torch.where(missing, torch.full_like(truth, 0.5), truth)
    rows = []
    for start in range(0, len(images), 8):
        rows += [part[start : start + 8] for part in (masked, filled, truth)]
    save_png(image_grid(torch.cat(rows), nrow=min(8, len(images))), path)


def imputation_benchmark(
    model: ConvVAE,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    specs: tuple[str, ...] = ("center", "left-half", "random:0.5"),
    iterations: int = 5,
    seed: int = 0,
) -> tuple[dict[str, dict[str, float]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Missing-pixel errors of the VAE and both baselines for each mask spec.

    images: uint8 (N, C, H, W), N >= 8. Returns ({spec, ":" written "-": {"missing_fraction",
    "vae_mse", "vae_bce_nats", "train_mean_mse", ..., "nearest_neighbour_bce_nats"}}, and the
    arguments of ``save_imputation_grid`` for the first 8 test images under each spec in turn).
    """
    shape = tuple(test_images.shape[1:])
    fill = mean_fill(train_images)
    results, figure = {}, []
    for spec in specs:
        missing = make_mask(spec, len(test_images), shape, seed)
        methods = {
            "vae": impute(model, test_images, missing, fill, iterations),
            "train_mean": torch.where(missing, fill, to_unit_interval(test_images)),
            "nearest_neighbour": nearest_neighbour_fill(train_images, test_images, missing),
        }
        # MLflow metric names allow no ":" (random:0.5 → random-0.5).
        result = results[spec.replace(":", "-")] = {
            "missing_fraction": missing.float().mean().item()
        }
        for method, filled in methods.items():
            for key, value in missing_pixel_errors(filled, test_images, missing).items():
                result[f"{method}_{key}"] = value
        figure.append((test_images[:8], missing[:8], methods["vae"][:8]))
    images, missing, filled = (torch.cat(parts) for parts in zip(*figure, strict=True))
    return results, (images, missing, filled)
