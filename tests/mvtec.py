"""Small MVTec AD-layout folders built from real photographs that scikit-image ships (no network).

Normal images are random crops (and flips) of one real texture: the brick wall for greyscale, the
immunohistochemistry slide for RGB, halved in size so a crop holds several texture elements.
Two defect kinds are drawn on other crops of the same texture: ``scratch`` (a 1-2 pixel line of
one random colour) and ``patch`` (a square or disc cut from a different photograph: the camera
man or the astronaut). Each mask is 255 on exactly the pixels drawn, 0 elsewhere.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data, draw

DEFECTS = ("scratch", "patch")


@cache
def _photo(name: str) -> np.ndarray:
    """A scikit-image photograph at half size, uint8 (H, W) or (H, W, 3); cached per process."""
    pixels = getattr(data, name)()
    image = Image.fromarray(pixels)
    return np.asarray(image.resize((image.width // 2, image.height // 2), Image.BILINEAR))


def _texture(rgb: bool, texture: str | None = None) -> np.ndarray:
    return _photo(texture or ("immunohistochemistry" if rgb else "brick"))


def _foreign(rgb: bool) -> np.ndarray:
    return _photo("astronaut" if rgb else "camera")


def _crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    top = rng.integers(0, photo.shape[0] - size + 1)
    left = rng.integers(0, photo.shape[1] - size + 1)
    return photo[top : top + size, left : left + size]


def _good(
    rgb: bool, size: int, n: int, rng: np.random.Generator, texture: str | None = None
) -> list[np.ndarray]:
    """n crops of the texture, each flipped left-right and/or up-down at random; (H, W[, 3])."""
    crops = []
    for _ in range(n):
        crop = _crop(_texture(rgb, texture), size, rng)
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        crops.append(np.ascontiguousarray(crop[::-1] if rng.random() < 0.5 else crop))
    return crops


def good_patches(rgb: bool, size: int, n: int, seed: int) -> np.ndarray:
    """n normal images as uint8 (n, C, size, size), C = 3 when rgb else 1."""
    crops = np.stack(_good(rgb, size, n, np.random.default_rng(seed)))
    return crops.transpose(0, 3, 1, 2) if rgb else crops[:, None]


def scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A straight line, 1 or 2 pixels wide, at a random angle, in one random colour/intensity."""
    size = image.shape[0]
    angle, length = rng.uniform(0, np.pi), rng.uniform(0.5, 0.9) * size
    centre = rng.uniform(size / 4, 3 * size / 4, 2)
    offset = length / 2 * np.array([np.sin(angle), np.cos(angle)])
    (r0, c0), (r1, c1) = np.clip(np.rint([centre - offset, centre + offset]), 0, size - 1)
    rows, cols = draw.line(int(r0), int(c0), int(r1), int(c1))
    if rng.random() < 0.5:  # a second line beside the first: across a mostly horizontal line
        steep = abs(r1 - r0) > abs(c1 - c0)
        rows = np.concatenate([rows, rows if steep else np.minimum(rows + 1, size - 1)])
        cols = np.concatenate([cols, np.minimum(cols + 1, size - 1) if steep else cols])
    mask = np.zeros((size, size), np.uint8)
    mask[rows, cols] = 255
    out = image.copy()
    if image.ndim == 3:
        out[mask > 0] = rng.integers(0, 256, 3)
    else:  # dark or bright, so the line stands out on the grey texture
        out[mask > 0] = rng.integers(0, 40) if rng.random() < 0.5 else rng.integers(216, 256)
    return out, mask


def patch(
    image: np.ndarray, foreign: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A square or a disc, a quarter to a third of the side, cut from another photograph."""
    size = image.shape[0]
    side = int(rng.integers(size // 4, size // 3 + 1))
    top, left = rng.integers(0, size - side + 1, 2)
    shape = np.zeros((side, side), bool)
    if rng.random() < 0.5:
        shape[:] = True
    else:
        shape[draw.disk(((side - 1) / 2, (side - 1) / 2), side / 2, shape=shape.shape)] = True
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + side, left : left + side][shape] = 255
    out = image.copy()
    out[mask > 0] = _crop(foreign, side, rng)[shape]
    return out, mask


def _save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def build_mvtec_folder(
    root: Path,
    *,
    rgb: bool,
    size: int = 32,
    n_train: int = 60,
    n_test_good: int = 20,
    n_per_defect: int = 10,
    seed: int = 0,
    fmt: str = "png",
    texture: str | None = None,
) -> Path:
    """Write train/good, test/good, test/{scratch,patch} and ground_truth/* (PNG masks) to root.

    Images are ``size`` square, named 000.<fmt>, 001.<fmt>, ...; masks 000_mask.png, ...
    ``texture`` names another skimage.data photograph (grey when not rgb: grass, gravel).
    """
    rng = np.random.default_rng(seed)
    total = n_train + n_test_good + len(DEFECTS) * n_per_defect
    normal = _good(rgb, size, total, rng, texture)
    for i, image in enumerate(normal[:n_train]):
        _save(image, root / "train" / "good" / f"{i:03d}.{fmt}")
    for i, image in enumerate(normal[n_train : n_train + n_test_good]):
        _save(image, root / "test" / "good" / f"{i:03d}.{fmt}")
    bases = iter(normal[n_train + n_test_good :])
    for defect in DEFECTS:
        for i in range(n_per_defect):
            base = next(bases)
            image, mask = (
                scratch(base, rng) if defect == "scratch" else patch(base, _foreign(rgb), rng)
            )
            _save(image, root / "test" / defect / f"{i:03d}.{fmt}")
            _save(mask, root / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root
