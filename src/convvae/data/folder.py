"""A user's image folder laid out as one MVTec AD category, read into uint8 arrays.

Layout: ``train/good/`` (normal images, required), optional ``test/good/`` and
``test/<defect>/``, optional ``ground_truth/<defect>/<image stem>_mask.<ext>``. Files are read in
sorted order, each once: its bytes are hashed (sha256, for provenance) and decoded from memory, so
the hash is of exactly the bytes the pixels came from. Every problem is a one-line DataError that
names the file or folder and the fix.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageMode, UnidentifiedImageError
from PIL.Image import DecompressionBombError, DecompressionBombWarning

from convvae.errors import ConfigError, DataError
from convvae.yamlconfig import size_pair

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The formats SUFFIXES name: a file is decoded only as one of them, whatever its suffix (an EPS
# named .png would otherwise reach Ghostscript where it is installed).
FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
# The largest image a file may hold, checked from its header before any pixel is decoded
# (Pillow only warns up to 179 MP): 8192 x 8192, 64 MiB per 8-bit channel.
MAX_IMAGE_PIXELS = 8192 * 8192
# The most memory one decoded image may take, checked from its header's size and pixel mode:
# an RGB image at the pixel limit (a 4-byte mode, RGBA, 32-bit or float, gets fewer pixels).
MAX_DECODED_BYTES = 3 * MAX_IMAGE_PIXELS
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# MLflow's metric-key characters on every platform, less the slash.
DEFECT_NAME = re.compile(r"[\w.\- ]+")
# MLflow refuses metric keys over 250 characters: room for the prefixes a defect name gets.
MAX_DEFECT_NAME = 150
RESIZE = "bilinear (Pillow, antialias) for images, nearest for masks"
LAYOUT = (
    "expected {}/train/good/ with normal images, optional test/good/, test/<defect>/ and "
    "ground_truth/<defect>/<name>_mask.png (the MVTec AD layout)"
)
Size = int | tuple[int, int] | None
# Pillow reports a broken or hostile file with any of these, depending on format and damage.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, DecompressionBombError)


@dataclass(frozen=True)
class FolderData:
    """One category: train/good images and, when there is a test/ folder, the labelled test set.

    test is test/good first, then the defect folders in sorted order; test_labels index
    class_names (0 = good). test_masks are 0/1 at the final size, all zero for good images and
    for defect images without a mask file; mask_known says which masks are real (True for good
    images), so pixel metrics use only those.
    """

    train: np.ndarray
    test: np.ndarray | None
    test_labels: np.ndarray | None
    test_masks: np.ndarray | None
    mask_known: np.ndarray | None
    class_names: list[str]
    files: dict[str, str]
    test_names: list[str]
    train_names: list[str]
    preprocessing: dict


def read_image_file(path: Path) -> Image.Image:
    """Open and fully decode ``path`` now, so a truncated file fails here, naming the file."""
    return decode_image(_read_bytes(Path(path)), Path(path))


def preprocess_image(image: Image.Image, image_size: Size, crop: Size, channels: int) -> np.ndarray:
    """8-bit, ``channels`` (1 or 3), bilinear resize to image_size (height, width), centre crop.

    16-bit greyscale ("I;16", "I") keeps its high byte (value >> 8); float ("F") must lie in
    [0, 1]. Greyscale becomes RGB by replicating it; RGB to one channel is refused rather than
    guessed. Returns uint8 (C, H, W).
    """
    if channels not in (1, 3):
        raise ConfigError(f"data.channels is {channels!r}; use 1, 3 or auto")
    if _channel_count(image) > channels:
        raise DataError(
            f"the image is {image.mode} (colour) but data.channels is 1; "
            "set data.channels: auto or convert the file to grey"
        )
    image = _eight_bit(image).convert("L" if channels == 1 else "RGB")
    size = size_pair(image_size, "data.image_size")
    if size is not None:
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    pixels = _centre_crop(np.asarray(image), size_pair(crop, "data.crop"))
    return np.ascontiguousarray(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))


def load_folder(
    root: str | Path, image_size: Size, crop: Size, channels: int | Literal["auto"]
) -> FolderData:
    """Read the category under ``root``; sizes and channels are checked, never guessed.

    image_size None keeps the files' size (all must share it); channels "auto" is 1 when every
    image is greyscale, else 3.
    """
    root = Path(root)
    train_files = _train_files(root)
    tests = _test_folders(root)
    masks = _mask_files(root, tests or {})
    reader = _Reader(image_size, crop, channels)
    test_files = [p for files in (tests or {}).values() for p in files]
    images = reader.finish([reader.image(p) for p in [*train_files, *test_files]])
    names = ["good", *(name for name in tests or {} if name != "good")]
    part = (None,) * 4
    if tests is not None:
        part = _test_part(reader, images[len(train_files) :], test_files, masks, names)
    return FolderData(  # the test fields in part: test, test_labels, test_masks, mask_known
        images[: len(train_files)],
        *part,
        class_names=names,
        files=reader.files,
        test_names=[f"test/{p.parent.name}/{p.name}" for p in test_files],
        train_names=[f"train/good/{p.name}" for p in train_files],
        preprocessing=reader.record(),
    )


class _Reader:
    """Reads each image and mask once, hashing its bytes, at one size and channel count."""

    def __init__(self, image_size: Size, crop: Size, channels: int | Literal["auto"]) -> None:
        if channels not in ("auto", 1, 3):
            raise ConfigError(f"data.channels is {channels!r}; use 1, 3 or auto")
        self.size, self.crop = (
            size_pair(image_size, "data.image_size"),
            size_pair(crop, "data.crop"),
        )
        self.channels = channels
        self.files: dict[str, str] = {}
        self.sizes: dict[Path, tuple[int, int]] = {}  # (width, height) as read, for the masks
        self.out_channels = 0

    def open(self, path: Path) -> Image.Image:
        data = _read_bytes(path)
        self.files[str(path)] = hashlib.sha256(data).hexdigest()
        return decode_image(data, path)

    def image(self, path: Path) -> np.ndarray:
        image = self.open(path)
        first = next(iter(self.sizes.items()), None)
        if self.size is None and first and image.size != first[1]:
            raise DataError(
                f"{path}: {image.size[0]}x{image.size[1]} pixels but {first[0]} is "
                f"{first[1][0]}x{first[1][1]}; set data.image_size to resize all images to one size"
            )
        self.sizes[path] = image.size
        wanted = _channel_count(image) if self.channels == "auto" else self.channels
        try:
            return preprocess_image(image, self.size, self.crop, wanted)
        except DataError as err:
            raise DataError(f"{path}: {err}") from None

    def mask(self, path: Path, image_path: Path) -> np.ndarray:
        mask, size = self.open(path), self.sizes[image_path]
        if mask.size != size:
            raise DataError(
                f"{path}: the mask is {mask.size[0]}x{mask.size[1]} pixels but its image "
                f"{image_path} is {size[0]}x{size[1]}; masks must have their image's size"
            )
        binary = Image.fromarray(_mask_pixels(mask))
        if self.size is not None:
            binary = binary.resize((self.size[1], self.size[0]), Image.NEAREST)
        return (_centre_crop(np.asarray(binary), self.crop) > 0).astype(np.uint8)

    def finish(self, arrays: list[np.ndarray]) -> np.ndarray:
        """One array; with channels auto, greyscale images join RGB ones as RGB."""
        self.out_channels = max(a.shape[0] for a in arrays)
        return np.stack([np.repeat(a, self.out_channels // a.shape[0], axis=0) for a in arrays])

    def record(self) -> dict:
        width, height = next(iter(self.sizes.values()))
        return {
            "image_size": list(self.size or (height, width)),
            "crop": list(self.crop) if self.crop else None,
            "channels": self.out_channels,
            "resize": RESIZE,
        }


def _test_part(
    reader: _Reader, test: np.ndarray, files: list[Path], masks: dict[Path, Path], names: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(test images, labels, masks, mask_known): a missing mask is zeros and not known."""
    labels = np.array([names.index(p.parent.name) for p in files], np.int64)
    empty = np.zeros(test.shape[2:], np.uint8)
    pixels = [reader.mask(masks[p], p) if p in masks else empty for p in files]
    known = np.array([p.parent.name == "good" or p in masks for p in files], bool)
    return test, labels, np.stack(pixels), known


def _train_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; " + LAYOUT.format(root))
    good = root / "train" / "good"
    if not good.is_dir():
        raise DataError(f"{good}: missing; " + LAYOUT.format(root))
    files = _images_in(good)
    if not files:
        raise DataError(f"{good}: holds no images; put the normal training images there")
    return files


def _test_folders(root: Path) -> dict[str, list[Path]] | None:
    """test/good first, then the defect folders sorted; None when there is no test/."""
    test = root / "test"
    if not test.exists():
        return None
    if not test.is_dir() or any(not p.is_dir() for p in _entries(test)):
        raise DataError(f"{test}: must hold only folders test/good/ and test/<defect>/ of images")
    names = sorted((p.name for p in _entries(test)), key=lambda name: (name != "good", name))
    for name in names:
        # Defect names become metric keys (image_roc_auc.<defect>): MLflow refuses other
        # characters, and only after evaluate's compute, so they are checked before training.
        if not DEFECT_NAME.fullmatch(name):
            raise DataError(
                f"{test / name}: the defect folder name {name!r} may hold only letters, digits, "
                "'_', '-', '.' and spaces; rename the folder (and its ground_truth/ twin)"
            )
        if len(name) > MAX_DEFECT_NAME:
            raise DataError(
                f"{test / name}: the defect folder name has {len(name)} characters, more than "
                f"the {MAX_DEFECT_NAME} a metric key leaves room for; shorten it (and its "
                "ground_truth/ twin)"
            )
    folders = {name: _images_in(test / name) for name in names}
    if not any(folders.values()):
        raise DataError(f"{test}: no images in test/good/ or test/<defect>/; add some or remove it")
    return folders


def _mask_files(root: Path, tests: dict[str, list[Path]]) -> dict[Path, Path]:
    """image path -> its mask path, for every mask under ground_truth/."""
    truth = root / "ground_truth"
    if not truth.exists():
        return {}
    if not truth.is_dir():
        raise DataError(f"{truth}: not a folder; it holds ground_truth/<defect>/<name>_mask.png")
    masks: dict[Path, Path] = {}
    for folder in _entries(truth):
        if not folder.is_dir() or folder.name == "good" or folder.name not in tests:
            raise DataError(
                f"{folder}: no defect folder test/{folder.name}/ for it; ground_truth/ holds "
                "one folder of masks per defect folder in test/"
            )
        masks.update(_match_masks(folder, tests[folder.name]))
    return masks


def _match_masks(folder: Path, images: list[Path]) -> dict[Path, Path]:
    stems = [p.stem for p in images]
    twins = [p for p in images if stems.count(p.stem) > 1]
    if twins:
        raise DataError(f"{twins[0]} and {twins[1]}: same name but the extension; rename one")
    by_stem, matched = dict(zip(stems, images, strict=True)), {}
    for mask in _images_in(folder):
        stem = mask.stem.removesuffix("_mask")
        image = by_stem.get(stem) if mask.stem.endswith("_mask") else None
        if image is None:
            raise DataError(
                f"{mask}: no image test/{folder.name}/{stem}.* for this mask; "
                "name masks <image stem>_mask.png"
            )
        if image in matched:
            raise DataError(f"{mask}: a second mask for {image}; keep one")
        matched[image] = mask
    return matched


def _entries(folder: Path) -> list[Path]:
    """Sorted, without hidden files (.DS_Store, ._*)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    files = _entries(folder)
    for path in files:
        if not (path.is_file() and path.suffix.lower() in SUFFIXES):
            raise DataError(
                f"{path}: not an image file ({' '.join(SUFFIXES)}); remove or convert it"
            )
    return files


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror}); check it") from None


def decode_image(data: bytes, path: Path | str) -> Image.Image:
    """A file's bytes decoded now (only FORMATS, size checked from the header first); errors
    name ``path``."""
    try:
        with warnings.catch_warnings():  # the size is checked below, with its own message
            warnings.simplefilter("ignore", DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{path}: {width}x{height} pixels, above the {MAX_IMAGE_PIXELS / 1e6:.0f} MP "
                "an image may have; downscale it before use"
            )
        _check_decoded_size(image, path)
        image.load()
    except UnidentifiedImageError:
        raise DataError(
            f"{path}: not a readable image (not {', '.join(FORMATS)}); replace or convert it"
        ) from None
    except _DECODE_ERRORS as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path}: not a readable image ({reason}); replace or remove it") from None
    return image


def _check_decoded_size(image: Image.Image, path: Path | str) -> None:
    """The decoded image's bytes, from its header's size and mode, within MAX_DECODED_BYTES."""
    mode = ImageMode.getmode(image.mode)  # Pillow opens only modes it knows
    decoded = image.width * image.height * len(mode.bands) * np.dtype(mode.typestr).itemsize
    if decoded > MAX_DECODED_BYTES:
        raise DataError(
            f"{path}: {image.width}x{image.height} {image.mode} pixels decode to "
            f"{decoded / 2**20:.0f} MiB, above the {MAX_DECODED_BYTES / 2**20:.0f} MiB an image "
            "may take; downscale it or save it with 8-bit channels"
        )


def _channel_count(image: Image.Image) -> int:
    return 1 if image.mode in GREY_MODES else 3


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit ("I;16", "I") keeps the high byte; float ("F") must be in [0, 1]; LA drops alpha.

    32-bit integers ("I", e.g. a TIFF) must hold 16-bit values: outside 0..65535 they are
    refused, and so are images whose values all fit in 0..255, which may be 8-bit values
    (made black by the shift) or a very dark 16-bit image: a guess either way."""
    if image.mode.startswith("I"):
        # Shifted in the file's own integer type: an int64 copy of a large 16-bit image would
        # take four times its decoded size.
        pixels = np.asarray(image)
        low, high = int(pixels.min()), int(pixels.max())
        if image.mode == "I" and (low < 0 or high > 65535):
            raise DataError(
                f"32-bit integer pixels in [{low}, {high}], outside 16-bit "
                "0..65535; save the image as 8 or 16 bits"
            )
        if image.mode == "I" and high <= 255:
            raise DataError(
                "32-bit integer pixels all within 0..255: 8-bit values or a very dark 16-bit "
                "image? save it as 8 bits (mode L) or 16 bits (I;16)"
            )
        return Image.fromarray((pixels >> 8).astype(np.uint8))
    if image.mode == "F":
        pixels = np.asarray(image)
        if not (np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1):
            raise DataError("float pixels outside [0, 1]; save the image as 8 or 16 bits")
        return Image.fromarray(np.rint(pixels * 255).astype(np.uint8))
    return image.convert("L") if image.mode in ("LA", "La") else image


def _mask_pixels(mask: Image.Image) -> np.ndarray:
    """uint8 (H, W), 255 where any colour channel is non-zero (alpha ignored), else 0."""
    if mask.mode in ("LA", "La"):
        mask = mask.convert("L")
    elif mask.mode not in GREY_MODES and mask.mode != "RGB":
        mask = mask.convert("RGB")
    pixels = np.asarray(mask) > 0
    return np.where(pixels.any(axis=2) if pixels.ndim == 3 else pixels, 255, 0).astype(np.uint8)


def _centre_crop(pixels: np.ndarray, crop: tuple[int, int] | None) -> np.ndarray:
    if crop is None:
        return pixels
    height, width = pixels.shape[:2]
    if crop[0] > height or crop[1] > width:
        raise DataError(
            f"crop {crop[0]}x{crop[1]} (height x width) is larger than the image, {height}x{width} "
            "after resizing; set data.crop no larger than data.image_size"
        )
    top, left = (height - crop[0]) // 2, (width - crop[1]) // 2
    return pixels[top : top + crop[0], left : left + crop[1]]
