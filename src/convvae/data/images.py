"""Pixels: the one place that scales them between uint8 and [0, 1], checks them, and writes
them as PNG files and grids.

Pixels live as uint8 (N, C, H, W) arrays on disk and in memory; the model sees float32 in [0, 1].
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convvae.errors import ConfigError
from convvae.runtime.files import atomic_path

# Input values (images x C x H x W) in one batch of a forward pass outside training: the
# decoder's activations are about 12 times its input at 256 px RGB (the last layer's patches),
# so 2^24 keeps a batch near 1 GB at any size (512 images at 28 px, 85 at 256 px RGB).
FORWARD_BATCH_VALUES = 1 << 24


def images_per_batch(image_shape: tuple[int, ...], most: int = 512) -> int:
    """Images of ``image_shape`` (C, H, W) in one forward batch: ``most``, fewer for large
    images (FORWARD_BATCH_VALUES)."""
    return max(1, min(most, FORWARD_BATCH_VALUES // math.prod(image_shape)))


def to_unit_interval(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float32 in [0, 1], the model's input; floats pass through."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[0, 1] float (..., C, H, W) → uint8 numpy, rounded to the nearest of 256 levels."""
    return images.detach().mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


def as_uint8_images(images: np.ndarray) -> np.ndarray:
    """uint8 images as they are; float pixels in [0, 1] rounded to the nearest of the 256 grey
    levels (the one preprocessing of every scoring path); contiguous (N, C, H, W). Takes numpy
    arrays and CPU tensors."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(images)


def check_pixels(x: torch.Tensor) -> None:
    """Model inputs must lie in [0, 1]; the seed fed Normalize(0.5, 0.5) output in [-1, 1]."""
    low, high = torch.aminmax(x.detach())
    if not (low >= 0 and high <= 1):  # NaN fails both comparisons
        raise ValueError(
            f"pixel values must lie in [0, 1], got [{low.item():.3f}, {high.item():.3f}]; "
            "scale uint8 images by 1/255 and do not normalise to [-1, 1]"
        )


def image_grid(images: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """[0, 1] float (N, C, H, W) → one uint8 (C, H', W') grid, white 1-pixel padding.

    nrow: images per row; default the square root of N, rounded up.
    """
    from torchvision.utils import make_grid

    nrow = nrow or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images, nrow=nrow, pad_value=1)
    return to_uint8(grid[: images.shape[1]])


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write one uint8 (C, H, W) image as PNG, atomically."""
    channels = image.shape[0]
    pixels = image[0] if channels == 1 else np.transpose(image, (1, 2, 0))
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, mode="L" if channels == 1 else "RGB").save(tmp, format="PNG")


def write_images(images: torch.Tensor, out: str | Path) -> None:
    """[0, 1] float (N, C, H, W) → a grid PNG, or a float32 .npy when ``out`` ends in .npy."""
    suffix = Path(out).suffix.lower()
    if suffix == ".npy":
        with atomic_path(out) as tmp, tmp.open("wb") as file:
            np.save(file, images.numpy().astype(np.float32))
    elif suffix == ".png":
        save_png(image_grid(images), out)
    else:
        raise ConfigError(f"--out {out}: write .png (a grid) or .npy (float pixels in [0, 1])")
