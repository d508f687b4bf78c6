"""User images in and out: folders of image files, single files, .npy and .npz arrays, read at
the model's size (or resized as the prepare stage did) and written as PNG folders.

User images are never resized or converted silently: a wrong size, channel count or dtype is a
DataError that says what was found and what the model expects.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convvae.data.folder import SUFFIXES
from convvae.data.images import save_png
from convvae.errors import DataError

# Read through Pillow (convvae.data.folder): the formats a user's folder may hold.
IMAGE_SUFFIXES = SUFFIXES


@dataclass(frozen=True)
class ImageBatch:
    """uint8 images (N, C, H, W) and the name of each (file name, or ``array[i]``)."""

    images: np.ndarray
    names: list[str]


@dataclass(frozen=True)
class Resize:
    """How image files are brought to the model's size when the user asks (``--resize``): as
    the prepare stage did (bilinear resize to ``image_size``, then a centre ``crop``)."""

    image_size: tuple[int, int]
    crop: tuple[int, int] | None = None


def load_images(
    path: str | Path, shape: tuple[int, int, int], resize: Resize | None = None
) -> ImageBatch:
    """Read a folder of images (PNG, JPEG, BMP, TIFF), one image, an .npy array or an .npz (its
    only array, or ``images``).

    ``shape`` is the model's (C, H, W). Arrays may be (N, H, W) when C is 1, or (N, C, H, W),
    uint8 (0..255) or float (0..1, rounded to the nearest of the 256 uint8 levels). Image files
    must be grey for C=1 or RGB for C=3, and of the model's size unless ``resize`` says how to
    bring them to it (arrays are never resized). Returns uint8 (N, C, H, W).
    """
    path = Path(path)
    if path.is_dir():
        return _load_png_folder(path, shape, resize)
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder; pass a folder of PNGs, an .npy or .npz")
    if path.suffix == ".npy":
        array = _load_array(path, lambda: np.load(path, allow_pickle=False))
    elif path.suffix == ".npz":
        array = _load_array(path, lambda: _only_array(path))
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageBatch(_read_png(path, shape, resize)[None], [path.name])
    else:
        raise DataError(f"{path}: unsupported file type; pass a folder of PNGs, an .npy or .npz")
    images = _check_array(array, shape, str(path))
    return ImageBatch(images, [f"{path.name}[{i}]" for i in range(len(images))])


def iter_images(
    path: str | Path, shape: tuple[int, int, int], resize: Resize | None = None, batch: int = 512
) -> tuple[int, Iterator[ImageBatch]]:
    """``load_images`` in batches of at most ``batch`` files, so that a folder of any size is
    read with bounded memory: (number of images, the batches). Arrays come as one batch."""
    path = Path(path)
    if not path.is_dir():
        whole = load_images(path, shape, resize)
        return len(whole.names), iter([whole])
    files = _image_files(path)

    def batches() -> Iterator[ImageBatch]:
        for start in range(0, len(files), batch):
            chunk = files[start : start + batch]
            images = np.stack([_read_png(p, shape, resize) for p in chunk])
            yield ImageBatch(images, [p.name for p in chunk])

    return len(files), batches()


def image_names(path: str | Path) -> list[str]:
    """The names ``iter_images`` gives a folder's images, without reading them; [] for an array
    or a single file."""
    path = Path(path)
    return [p.name for p in _image_files(path)] if path.is_dir() else []


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: the folder is empty; put images in it")
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise DataError(
            f"{folder}: {others[0]} is not an image ({len(others)} such files); the folder must "
            f"hold only {', '.join(IMAGE_SUFFIXES)} files"
        )
    return files


def _load_png_folder(
    folder: Path, shape: tuple[int, int, int], resize: Resize | None
) -> ImageBatch:
    files = _image_files(folder)
    images = np.stack([_read_png(p, shape, resize) for p in files])
    return ImageBatch(images, [p.name for p in files])


def _read_png(path: Path, shape: tuple[int, int, int], resize: Resize | None) -> np.ndarray:
    from convvae.data.folder import read_image_file

    return model_pixels(read_image_file(path), path, shape, resize)


def file_bytes_pixels(
    data: bytes, path: str, shape: tuple[int, int, int], resize: Resize | None = None
) -> np.ndarray:
    """An image file's bytes as the model's uint8 (C, H, W) pixels, exactly as ``load_images``
    reads the file (for readers that hold bytes, not paths: a Spark ``binaryFile`` column)."""
    from convvae.data.folder import decode_image

    return model_pixels(decode_image(data, path), path, shape, resize)


def model_pixels(
    image, path: Path | str, shape: tuple[int, int, int], resize: Resize | None
) -> np.ndarray:
    """A decoded PIL image as the model's uint8 (C, H, W): grey or RGB as the model takes it,
    of its size unless ``resize`` says how to bring it there; errors name ``path``."""
    from convvae.data.folder import GREY_MODES, preprocess_image

    channels, height, width = shape
    wanted_mode = "L" if channels == 1 else "RGB"
    if channels == 1 and image.mode not in GREY_MODES:  # colour is not made grey silently
        raise DataError(
            f"{path}: image mode {image.mode} (colour), the model takes grey images (1 "
            "channel); convert it yourself, e.g. PIL's image.convert('L')"
        )
    if resize is None and image.mode != wanted_mode:
        raise DataError(
            f"{path}: image mode {image.mode}, the model expects {wanted_mode} ({channels} "
            f"channel{'s' if channels > 1 else ''}); convert it, e.g. PIL's "
            f"image.convert('{wanted_mode}'), or pass --resize to convert and resize as the "
            "prepare stage did"
        )
    if resize is None and image.size != (width, height):
        raise DataError(
            f"{path}: {image.size[0]}x{image.size[1]} pixels, the model expects {width}x{height}; "
            "images are not resized silently: pass --resize, or resize them yourself"
        )
    try:
        pixels = preprocess_image(
            image, resize and resize.image_size, resize and resize.crop, channels
        )
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    if pixels.shape != shape:
        raise DataError(
            f"{path}: {pixels.shape[2]}x{pixels.shape[1]} after --resize, the model expects "
            f"{width}x{height}"
        )
    return pixels


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


def write_png_folder(images: np.ndarray, names: list[str], folder: str | Path) -> None:
    """uint8 (N, C, H, W) as one PNG per name in ``folder``, under ``png_file_name``'s safe
    names. Names that collide there are a DataError before any file is written."""
    files = [png_file_name(name) for name in names]
    taken: dict[str, str] = {}
    for name, file in zip(names, files, strict=True):
        # Case-insensitive: two names differing in case are one file on macOS and Windows.
        if file.lower() in taken:
            raise DataError(
                f"images {taken[file.lower()]!r} and {name!r} would both be written as {file}; "
                "give the images distinct names"
            )
        taken[file.lower()] = name
    for image, file in zip(images, files, strict=True):
        save_png(image, Path(folder) / file)


def png_file_name(name: str) -> str:
    """A file name inside the output folder for an image named ``name`` (which may come from an
    untrusted code file): its last path part, characters other than letters, digits, ``.``, ``-``
    and ``_`` replaced by ``_``, no leading dot, ending ``.png`` (a.npz[3] -> a.npz_3.png,
    ../../x.png -> x.png)."""
    base = re.split(r"[\\/]", name)[-1]
    stem = base[:-4] if base.lower().endswith(".png") else base
    safe = re.sub(r"[^\w.-]+", "_", stem).strip("._")
    # At most 200 bytes (file systems count bytes, not characters: 300 CJK ones are 900).
    safe = safe.encode()[:200].decode(errors="ignore")
    if not safe:
        raise DataError(f"image name {name!r} leaves no file name; give the image a name")
    return safe + ".png"
