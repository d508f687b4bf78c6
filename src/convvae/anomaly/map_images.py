"""Anomaly maps as pictures and files: heat-map overlays, the evaluate stage's figure and
`convvae score --maps`'s per-image files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scoring import anomaly_maps
from convvae.data.image_files import IMAGE_SUFFIXES
from convvae.data.images import image_grid, save_png
from convvae.errors import DataError
from convvae.runtime.files import atomic_path


def heatmap(heat: np.ndarray, high: float) -> np.ndarray:
    """An anomaly map (H, W) in matplotlib's ``inferno`` colours, 0 black to ``high`` and above
    pale yellow: uint8 (3, H, W)."""
    return _inferno(_heat_level(heat, high))


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, high: float) -> np.ndarray:
    """uint8 image (C, H, W) with an anomaly map (H, W) laid over it in matplotlib's
    ``inferno`` colours (0 → transparent, ``high`` and above → opaque): uint8 (3, H, W)."""
    level = _heat_level(heat, high)
    colours = _inferno(level).transpose(1, 2, 0).astype(np.float32) / 255
    grey_or_rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    base = grey_or_rgb.transpose(1, 2, 0).astype(np.float32) / 255
    alpha = 0.6 * level[..., None]
    blended = (1 - alpha) * base + alpha * colours
    return np.rint(blended * 255).astype(np.uint8).transpose(2, 0, 1)


def _inferno(level: np.ndarray) -> np.ndarray:
    """Levels in [0, 1] (H, W) as matplotlib's ``inferno`` colours: uint8 (3, H, W)."""
    from matplotlib import colormaps

    colours = colormaps["inferno"](level)[..., :3]
    return np.rint(colours * 255).astype(np.uint8).transpose(2, 0, 1)


def _heat_level(heat: np.ndarray, high: float) -> np.ndarray:
    """An anomaly map's values as a share of ``high``, clipped to [0, 1]."""
    return np.clip(heat / max(high, 1e-12), 0, 1)


def save_map_figure(
    images: np.ndarray, maps: np.ndarray, masks: np.ndarray | None, path: Path
) -> None:
    """A PNG with one column per image: the image, its anomaly map over it, the map alone,
    and its mask."""
    high = float(np.quantile(maps, 0.99)) if maps.size else 1.0
    rows = [
        images,
        np.stack([heatmap_overlay(i, m, high) for i, m in zip(images, maps, strict=True)]),
        np.stack([heatmap(m, high) for m in maps]),
    ]
    if masks is not None:
        rows.append(np.repeat(masks[:, None] * 255, images.shape[1], axis=1).astype(np.uint8))
    as_rgb = [np.repeat(r, 3, axis=1) if r.shape[1] == 1 else r for r in rows]
    stacked = torch.from_numpy(np.concatenate(as_rgb)).float() / 255
    save_png(image_grid(stacked, nrow=len(images)), path)


def map_scale(scorer: Scorer) -> float:
    """The overlays' colour scale for a threshold record written before 0.2 (which holds none;
    newer records hold the 99.9th percentile of held-out normal images' maps): the 99.9th
    percentile of the maps of (up to 256 of) the model's reference images, biased low by their
    self-matches."""
    if scorer.reference is None or scorer.reference.images is None:
        return 1.0
    return float(np.quantile(anomaly_maps(scorer, scorer.reference.images[:256]), 0.999))


def map_stem(name: str) -> str:
    """The map files' stem for an image name: a.png → a (a.npz[3] → a.npz_3)."""
    suffix = Path(name).suffix
    base = name[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else name  # a.npz[3] stays
    return re.sub(r"[^\w.-]+", "_", base).strip("_") or "image"


def check_map_names(names: list[str]) -> None:
    """Refuse, before any work, image names whose maps would overwrite each other (a.png and
    a.bmp both write a_map.png)."""
    first: dict[str, str] = {}
    for name in names:
        stem = map_stem(name)
        if stem in first:
            raise DataError(
                f"{first[stem]} and {name} would both write {stem}_map.png and {stem}_map.npy; "
                "rename one, or score without --maps"
            )
        first[stem] = name


def write_maps(
    images: np.ndarray, maps: np.ndarray, names: list[str], folder: str | Path, high: float
) -> None:
    """Per image, ``<name>_map.png`` (its map over the image, fully hot at ``high``: pass
    ``map_scale(scorer)``, computed once for every batch) and ``<name>_map.npy`` (float32
    (H, W), the smoothed map) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for image, heat, name in zip(images, maps, names, strict=True):
        stem = map_stem(name)
        save_png(heatmap_overlay(image, heat, high), folder / f"{stem}_map.png")
        with atomic_path(folder / f"{stem}_map.npy") as tmp, tmp.open("wb") as file:
            np.save(file, heat.astype(np.float32))
