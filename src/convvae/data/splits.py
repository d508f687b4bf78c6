"""Seeded stratified splits of a source, the split file the prepare stage writes, its manifest,
and the two halves of the held-out normal images.

Every problem a user can fix (a missing, truncated or corrupt file) is a one-line ``DataError``
that names the file and says how to fix it.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from convvae.config import DataConfig
from convvae.data.sources import LabelledImages, SourceData, load_source
from convvae.errors import DataError
from convvae.runtime.files import read_json, write_atomically

_PREPARE_FIX = "re-run the prepare stage (dvc repro prepare)"
_SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    """Disjoint train / validation / test images drawn from one source."""

    train: LabelledImages
    val: LabelledImages
    test: LabelledImages


def make_splits(
    source: SourceData,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_train_images: int | None = None,
) -> Splits:
    """Split ``source`` into train/val/test, stratified by label; same inputs give equal arrays.

    With an official test part, test is that part and val is ``val_fraction`` of the official
    train part. Without one (mnist-5k), test and val are ``test_fraction`` and ``val_fraction``
    of all images. ``max_train_images`` caps each of the three splits at that many images
    (a stratified slice for smoke runs). Drawn splits are in seeded random order.
    """
    pool = source.train
    remaining = np.arange(len(pool))
    if source.test is None:
        n_test = round(test_fraction * len(pool))
        _check_split_size("data.test_fraction", test_fraction, n_test, len(pool), len(pool))
        test_idx, remaining = _stratified_take(remaining, pool.labels, n_test, seed)
        test = _subset(pool, test_idx)
    else:
        test = source.test
    # val is a fraction of the whole pool even when test was taken from it first.
    n_val = round(val_fraction * len(pool))
    _check_split_size("data.val_fraction", val_fraction, n_val, len(pool), len(remaining))
    val_idx, train_idx = _stratified_take(remaining, pool.labels, n_val, seed)
    train, val = _subset(pool, train_idx), _subset(pool, val_idx)
    if max_train_images is not None:
        train, val, test = (_cap(part, max_train_images, seed) for part in (train, val, test))
    return Splits(train, val, test)


def load_configured(cfg: DataConfig) -> tuple[SourceData, Splits]:
    """The source that params.yaml's ``data`` section names, and its splits: what the
    ``prepare`` stage writes, and what a script that trains without it must use."""
    folder_options = {}
    if cfg.source == "folder":
        sizes = {key: cfg.size_pair(key) for key in ("image_size", "crop")}
        folder_options = {**sizes, "channels": cfg.channels}
    source = load_source(cfg.source, cfg.path, **folder_options)
    splits = make_splits(
        source, cfg.val_fraction, cfg.test_fraction, cfg.seed, cfg.max_train_images
    )
    return source, splits


def _check_split_size(key: str, fraction: float, size: int, pool: int, available: int) -> None:
    """A split of ``size`` images drawn from ``available`` must leave at least one on each side
    (a fraction of a small source can round to none)."""
    if not 1 <= size < available:
        raise DataError(
            f"{key} {fraction} of {pool} images gives {size} and leaves {available - size} "
            f"of {available}; each side needs at least one image: change {key} or use a "
            "larger source"
        )


def _stratified_take(
    indices: np.ndarray, labels: np.ndarray, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    # Returns (taken, rest) in seeded random order: mnist-5k is sorted by class, and a split
    # in that order would fill "the first 64 test images" with zeros.
    if size >= len(indices):
        return indices, indices[:0]
    try:
        taken, rest = train_test_split(
            indices, train_size=size, stratify=labels[indices], random_state=seed
        )
    except ValueError as err:
        raise DataError(
            f"cannot draw {size} of {len(indices)} images with every class on both sides "
            f"({' '.join(str(err).split())}); raise data.max_train_images to at least the "
            "number of classes, or the data fractions, or use a larger source"
        ) from None
    return taken, rest


def _subset(part: LabelledImages, indices: np.ndarray) -> LabelledImages:
    if part.masks is None:
        return LabelledImages(part.images[indices], part.labels[indices])
    return LabelledImages(
        part.images[indices], part.labels[indices], part.masks[indices], part.mask_known[indices]
    )


def _cap(part: LabelledImages, size: int, seed: int) -> LabelledImages:
    return _subset(part, _stratified_take(np.arange(len(part)), part.labels, size, seed)[0])


def build_manifest(source: SourceData, splits: Splits) -> dict:
    """Describe the prepared data as a JSON-serialisable dict.

    Keys: source, files ({path: sha256}), class_names, splits ({train|val|test: {count,
    per_class: {"0": n, ...}}}), image_shape ([C, H, W]), and for a folder its preprocessing
    and the number of test images with a defect mask.
    """
    n_classes = len(source.class_names)
    extra = {}
    if source.preprocessing is not None:
        extra["preprocessing"] = dict(source.preprocessing)
        extra["folder_sha256"] = folder_digest(source.files)
        known = splits.test.mask_known
        extra["test_images_with_masks"] = int(
            0 if known is None else (known & (splits.test.labels > 0)).sum()
        )
    return {
        "source": source.name,
        "files": dict(source.files),
        "class_names": list(source.class_names),
        "splits": {
            split: {
                "count": len(part),
                "per_class": {
                    str(label): int(count)
                    for label, count in enumerate(np.bincount(part.labels, minlength=n_classes))
                },
            }
            for split, part in _by_name(splits).items()
        },
        "image_shape": [int(size) for size in splits.train.images.shape[1:]],
        **extra,
    }


def folder_digest(files: dict[str, str]) -> str:
    """One sha256 for a folder of files: of the sorted "<sha256>  <relative path>" lines, as
    sha256sum prints them (a renamed, added or changed file changes it)."""
    lines = "".join(f"{sha}  {name}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def save_splits(splits: Splits, path: str | Path) -> None:
    """Write the splits to one compressed ``.npz`` atomically (no half-written file on a crash)."""
    path = Path(path)
    arrays = {f"{split}_images": part.images for split, part in _by_name(splits).items()}
    arrays |= {f"{split}_labels": part.labels for split, part in _by_name(splits).items()}
    if splits.test.masks is not None:
        arrays |= {"test_masks": splits.test.masks, "test_mask_known": splits.test.mask_known}
    try:
        # A file handle, not a name: np.savez would append ".npz" to the temporary name.
        write_atomically(path, lambda handle: np.savez_compressed(handle, **arrays))
    except OSError as err:
        raise DataError(
            f"{path}: cannot write ({err.strerror}); check free space and permissions"
        ) from None


def load_splits(path: str | Path) -> Splits:
    """Read splits written by ``save_splits``: uint8 images (N, C, H, W), int64 labels (N,)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: splits file not found; run the prepare stage (dvc repro prepare)")
    wanted = [f"{split}_{kind}" for split in _SPLIT_NAMES for kind in ("images", "labels")]
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single array, not a splits archive; {_PREPARE_FIX}")
        with npz:
            missing = [key for key in wanted if key not in npz.files]
            if missing:
                raise DataError(f"{path}: lacks {', '.join(missing)}; {_PREPARE_FIX}")
            arrays = {key: npz[key] for key in wanted}
            masks = {key: npz[key] for key in ("test_masks", "test_mask_known") if key in npz}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        reason = " ".join(str(err).split())
        raise DataError(f"{path}: unreadable or corrupt ({reason}); {_PREPARE_FIX}") from None
    parts = {}
    for split in _SPLIT_NAMES:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if (
            images.dtype != np.uint8
            or images.ndim != 4
            or images.shape[1:] != arrays["train_images"].shape[1:]
            or not np.issubdtype(labels.dtype, np.integer)
            or labels.shape != images.shape[:1]
        ):
            raise DataError(
                f"{path}: {split} holds {images.dtype} images {images.shape} and {labels.dtype} "
                f"labels {labels.shape}, not uint8 (N, C, H, W) and integer (N,) shaped like "
                f"train; {_PREPARE_FIX}"
            )
        parts[split] = LabelledImages(images, labels.astype(np.int64))
    if masks:
        parts["test"] = _with_masks(parts["test"], masks, path)
    return Splits(**parts)


def _with_masks(test: LabelledImages, masks: dict[str, np.ndarray], path: Path) -> LabelledImages:
    pixels, known = masks.get("test_masks"), masks.get("test_mask_known")
    n, _, height, width = test.images.shape
    if pixels is None or known is None or pixels.shape != (n, height, width) or known.shape != (n,):
        raise DataError(f"{path}: test masks do not match the test images; {_PREPARE_FIX}")
    return LabelledImages(test.images, test.labels, pixels, known.astype(bool))


@dataclass(frozen=True)
class PreparedData:
    """What the prepare stage wrote: the splits, their file's sha256 and the manifest."""

    splits: Splits
    path: Path  # the splits file
    sha256: str  # of the splits file
    manifest: dict  # the manifest's contents (build_manifest)


def read_manifest(path: str | Path) -> dict:
    """The prepare stage's manifest (class names, counts, preprocessing); DataError if missing
    or corrupt."""
    return read_json(path, _PREPARE_FIX)


def load_prepared(splits_path: str | Path, manifest_path: str | Path) -> PreparedData:
    """Read the prepared splits and manifest (DataError when either is missing or corrupt)."""
    splits_path, manifest_path = Path(splits_path), Path(manifest_path)
    splits = load_splits(splits_path)
    manifest = read_manifest(manifest_path)
    digest = hashlib.sha256(splits_path.read_bytes()).hexdigest()
    return PreparedData(splits, splits_path, digest, manifest)


def _by_name(splits: Splits) -> dict[str, LabelledImages]:
    return {split: getattr(splits, split) for split in _SPLIT_NAMES}


def selection_and_calibration(normal_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Held-out normal images (in seeded random order) split into the selection half (even
    positions: early stopping, the fused statistics) and the calibration half (odd positions:
    thresholds); fewer than 2 is a DataError."""
    if len(normal_images) < 2:
        raise DataError(
            f"{len(normal_images)} held-out normal image(s): at least 2 are needed (half choose "
            "the epoch, half calibrate the threshold); raise data.max_train_images or "
            "data.val_fraction"
        )
    return normal_images[0::2], normal_images[1::2]
