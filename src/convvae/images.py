"""Pixels and image files: the one place that scales pixels, reads user images, writes PNGs.

Pixels live as uint8 (N, C, H, W) arrays on disk and in memory; the model sees float32 in [0, 1].
User images are never resized or converted silently: a wrong size, channel count or dtype is a
DataError that says what was found and what the model expects.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from convvae.errors import ConfigError, DataError
from convvae.files import atomic_path

IMAGE_SUFFIXES = (".png",)


def to_unit_interval(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float32 in [0, 1], the model's input; floats pass through."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[0, 1] float (..., C, H, W) → uint8 numpy, rounded to the nearest of 256 levels."""
    return images.detach().mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


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


def write_png_folder(images: np.ndarray, names: list[str], folder: str | Path) -> None:
    """uint8 (N, C, H, W) as one PNG per name in ``folder`` (array names like a.npz[3] are
    written a.npz_3.png)."""
    for image, name in zip(images, names, strict=True):
        if not name.lower().endswith(".png"):
            name = re.sub(r"[^\w.-]+", "_", name).strip("_") + ".png"
        save_png(image, Path(folder) / name)


@dataclass(frozen=True)
class ImageBatch:
    """uint8 images (N, C, H, W) and the name of each (file name, or ``array[i]``)."""

    images: np.ndarray
    names: list[str]


def load_images(path: str | Path, shape: tuple[int, int, int]) -> ImageBatch:
    """Read a folder of PNGs, an .npy array or an .npz (its only array, or ``images``).

    ``shape`` is the model's (C, H, W). Arrays may be (N, H, W) when C is 1, or (N, C, H, W),
    uint8 (0..255) or float (0..1, rounded to the nearest of the 256 uint8 levels). PNGs must be
    8-bit greyscale (mode "L") for C=1 or RGB for C=3. Returns uint8 (N, C, H, W).
    """
    path = Path(path)
    if path.is_dir():
        return _load_png_folder(path, shape)
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder; pass a folder of PNGs, an .npy or .npz")
    if path.suffix == ".npy":
        array = _load_array(path, lambda: np.load(path, allow_pickle=False))
    elif path.suffix == ".npz":
        array = _load_array(path, lambda: _only_array(path))
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageBatch(_read_png(path, shape)[None], [path.name])
    else:
        raise DataError(f"{path}: unsupported file type; pass a folder of PNGs, an .npy or .npz")
    images = _check_array(array, shape, str(path))
    return ImageBatch(images, [f"{path.name}[{i}]" for i in range(len(images))])


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write one uint8 (C, H, W) image as PNG, atomically."""
    channels = image.shape[0]
    pixels = image[0] if channels == 1 else np.transpose(image, (1, 2, 0))
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, mode="L" if channels == 1 else "RGB").save(tmp, format="PNG")


def _load_png_folder(folder: Path, shape: tuple[int, int, int]) -> ImageBatch:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: the folder is empty; put PNG images in it")
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise DataError(
            f"{folder}: {others[0]} is not a PNG ({len(others)} such files); the folder must "
            "hold only .png images"
        )
    return ImageBatch(np.stack([_read_png(p, shape) for p in files]), [p.name for p in files])


def _read_png(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    channels, height, width = shape
    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
            pixels = np.asarray(image)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: not a readable image ({err}); replace or remove it") from None
    wanted_mode = "L" if channels == 1 else "RGB"
    if mode != wanted_mode:
        raise DataError(
            f"{path}: image mode {mode}, the model expects {wanted_mode} ({channels} channel"
            f"{'s' if channels > 1 else ''}); convert it, e.g. PIL's image.convert('{wanted_mode}')"
        )
    if size != (width, height):
        raise DataError(
            f"{path}: {size[0]}x{size[1]} pixels, the model expects {width}x{height}; images are "
            "not resized silently: resize them yourself"
        )
    return pixels[None] if channels == 1 else np.transpose(pixels, (2, 0, 1))


def _load_array(path: Path, read) -> np.ndarray:
    try:
        return read()
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable array file ({err}); re-create it") from None


def _only_array(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        if "images" in names:
            return archive["images"]
        if len(names) == 1:
            return archive[names[0]]
    raise DataError(f"{path}: holds arrays {names}; name the image array 'images'")


def _check_array(array: np.ndarray, shape: tuple[int, int, int], where: str) -> np.ndarray:
    channels = shape[0]
    if array.ndim == 3 and channels == 1:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1:] != shape:
        raise DataError(
            f"{where}: array of shape {array.shape}, the model expects (N, {shape[0]}, "
            f"{shape[1]}, {shape[2]}) or (N, {shape[1]}, {shape[2]}) for one channel; images are "
            "not resized silently"
        )
    if len(array) == 0:
        raise DataError(f"{where}: the array holds no images")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DataError(
                f"{where}: float pixels must lie in [0, 1] (found {np.nanmin(array):.3g} to "
                f"{np.nanmax(array):.3g}); scale them, or pass uint8 0..255"
            )
        return np.rint(array * 255).astype(np.uint8)
    raise DataError(
        f"{where}: pixel dtype {array.dtype}; pass uint8 (0..255) or float (0..1) pixels"
    )
