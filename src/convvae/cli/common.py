"""What the command groups share: the options that name a model and its images, and how a
models:/ reference finds its store."""

from __future__ import annotations

import argparse
import os

DEFAULT_PARAMS = "params.yaml"
MODEL_HELP = "a model file (models/model.pt), models:/NAME@alias or models:/NAME/VERSION"
IMAGES_HELP = "a folder of images (PNG, JPEG, BMP, TIFF), one image, an .npy or .npz"
RESIZE_HELP = (
    "resize (and crop) image files to the model's size as the prepare stage did; without it, "
    "a file of another size is an error"
)


def registry_tracking(args: argparse.Namespace):
    """For a models:/ reference: the tracking section of --params (of params.yaml where it
    exists when --params is not given; else the default store), so the CLI finds what the
    stages registered. Only that section is read."""
    from convvae.config import load_tracking
    from convvae.tracking.modelref import REGISTRY_PREFIX

    if not args.model.startswith(REGISTRY_PREFIX):
        return None
    if args.params is None:
        return load_tracking(DEFAULT_PARAMS) if os.path.isfile(DEFAULT_PARAMS) else None
    return load_tracking(args.params)  # given: a missing file is an error, not another store


def image_shape(model) -> tuple[int, int, int]:
    """(C, H, W) of the images a ConvVAE takes."""
    return model.arch.image_shape


def resize_option(model, asked: bool):
    """``--resize``: as the model's prepare stage did (its stored preprocessing), else a plain
    bilinear resize to the model's size; None when not asked (sizes must then match)."""
    from convvae.data.image_files import Resize

    if not asked:
        return None
    done = model.preprocessing or {}
    if done.get("image_size"):
        crop = done.get("crop")
        return Resize(tuple(done["image_size"]), tuple(crop) if crop else None)
    return Resize(tuple(model.arch.image_size))


def refuse_to_replace(paths, args: argparse.Namespace) -> None:
    """Outputs are never replaced silently: an existing one (file or symlink) is a ConfigError
    before any work, unless ``--overwrite``."""
    from pathlib import Path

    from convvae.errors import ConfigError

    if args.overwrite:
        return
    existing = [str(path) for path in map(Path, paths) if path.is_symlink() or path.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ConfigError(
            f"{existing[0]}{more} exists; pass --overwrite to replace it, or choose another output"
        )
