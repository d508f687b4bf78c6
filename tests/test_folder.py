"""load_folder on MVTec-layout folders of real texture crops (tests/mvtec.py), and every error."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convvae.config import DataConfig
from convvae.data.folder import (
    MAX_DEFECT_NAME,
    RESIZE,
    load_folder,
    preprocess_image,
    read_image_file,
)
from convvae.data.splits import load_configured
from convvae.errors import ConfigError, DataError
from tests.mvtec import build_mvtec_folder, good_patches

# build_mvtec_folder's defaults: 60 train, 20 test/good, 10 per defect; scratch drawn first.
N_TRAIN, N_GOOD, N_DEFECT = 60, 20, 10
LABELS = [0] * N_GOOD + [1] * N_DEFECT + [2] * N_DEFECT  # class_names good, patch, scratch


@pytest.fixture(scope="module")
def grey_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mvtec_folder(tmp_path_factory.mktemp("grey"), rgb=False)


@pytest.fixture(scope="module")
def rgb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mvtec_folder(tmp_path_factory.mktemp("rgb"), rgb=True)


def small(tmp_path: Path, rgb: bool = False, fmt: str = "png") -> Path:
    """A throwaway category to break: 4 train, 2 test/good, 2 per defect."""
    root = tmp_path / "category"
    return build_mvtec_folder(root, rgb=rgb, n_train=4, n_test_good=2, n_per_defect=2, fmt=fmt)


def drawn_on(rgb: bool) -> dict[str, np.ndarray]:
    """The normal crops each defect was drawn on, in load order (patch before scratch)."""
    crops = good_patches(rgb, 32, N_TRAIN + N_GOOD + 2 * N_DEFECT, seed=0)[N_TRAIN + N_GOOD :]
    return {"scratch": crops[:N_DEFECT], "patch": crops[N_DEFECT:]}


def raises(match_path: Path | str, text: str, error: type[Exception] = DataError):
    """pytest.raises: the message names the path, then holds text on the same line."""
    return pytest.raises(error, match=re.escape(str(match_path)) + ".*" + re.escape(text))


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_category_loads_with_labels_names_and_masks(request, rgb: bool) -> None:
    root = request.getfixturevalue("rgb_root" if rgb else "grey_root")
    data = load_folder(root, None, None, "auto")
    channels = 3 if rgb else 1
    assert data.train.dtype == data.test.dtype == np.uint8
    assert data.train.shape == (N_TRAIN, channels, 32, 32)
    assert data.test.shape == (len(LABELS), channels, 32, 32)
    np.testing.assert_array_equal(data.train, good_patches(rgb, 32, N_TRAIN, seed=0))
    assert data.class_names == ["good", "patch", "scratch"]
    assert data.test_labels.dtype == np.int64 and data.test_labels.tolist() == LABELS
    assert data.train_names == [f"train/good/{i:03d}.png" for i in range(N_TRAIN)]
    assert data.test_names[0] == "test/good/000.png"
    assert data.test_names[N_GOOD] == "test/patch/000.png"
    assert data.test_names[-1] == "test/scratch/009.png"
    assert data.test_masks.dtype == np.uint8 and data.test_masks.shape == (len(LABELS), 32, 32)
    assert set(np.unique(data.test_masks)) == {0, 1}
    assert data.test_masks.any(axis=(1, 2)).tolist() == [label > 0 for label in LABELS]
    assert data.mask_known.dtype == bool and data.mask_known.all()
    assert data.preprocessing == {
        "image_size": [32, 32],
        "crop": None,
        "channels": channels,
        "resize": RESIZE,
    }


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_masks_mark_exactly_the_pixels_the_builder_drew(request, rgb: bool) -> None:
    data = load_folder(request.getfixturevalue("rgb_root" if rgb else "grey_root"), None, None, 3)
    bases = {k: np.repeat(v, 3 // v.shape[1], axis=1) for k, v in drawn_on(rgb).items()}
    for i, label in enumerate(data.test_labels):
        if label == 0:
            continue
        defect = data.class_names[label]
        mask = data.test_masks[i].astype(bool)
        changed = (data.test[i] != bases[defect][(i - N_GOOD) % N_DEFECT]).any(axis=0)
        assert not (changed & ~mask).any(), data.test_names[i]
        assert changed.sum() >= 0.5 * mask.sum(), data.test_names[i]
        if defect == "scratch":  # one colour along the whole line
            assert len(np.unique(data.test[i][:, mask], axis=1).T) == 1, data.test_names[i]


def test_channels_auto_and_fixed(grey_root: Path, rgb_root: Path) -> None:
    grey = load_folder(grey_root, None, None, "auto")
    as_rgb = load_folder(grey_root, None, None, 3)
    assert grey.preprocessing["channels"] == 1 and as_rgb.preprocessing["channels"] == 3
    np.testing.assert_array_equal(as_rgb.train, np.repeat(grey.train, 3, axis=1))
    assert load_folder(rgb_root, None, None, "auto").train.shape[1] == 3


def test_resize_and_centre_crop_give_the_requested_shape(grey_root: Path) -> None:
    data = load_folder(grey_root, (24, 40), (20, 30), "auto")
    assert data.train.shape == (N_TRAIN, 1, 20, 30) and data.test.shape[1:] == (1, 20, 30)
    assert data.test_masks.shape == (len(LABELS), 20, 30)
    assert data.test_masks.any(axis=(1, 2)).tolist() == [label > 0 for label in LABELS]
    assert data.preprocessing["image_size"] == [24, 40] and data.preprocessing["crop"] == [20, 30]
    image = read_image_file(grey_root / "test" / "scratch" / "000.png")
    np.testing.assert_array_equal(
        data.test[-N_DEFECT], preprocess_image(image, (24, 40), (20, 30), 1)
    )
    assert load_folder(grey_root, 48, None, 1).train.shape == (N_TRAIN, 1, 48, 48)


def test_params_data_section_reaches_the_folder_loader(grey_root: Path) -> None:
    # load_configured is what prepare (and speed/train_on_device.py) load: every folder option
    # of params.yaml's data section must arrive, not only the path.
    cfg = DataConfig(source="folder", path=str(grey_root), image_size=[24, 40], crop=20, channels=3)
    source, splits = load_configured(cfg)
    assert source.preprocessing["image_size"] == [24, 40]
    assert source.preprocessing["crop"] == [20, 20] and source.preprocessing["channels"] == 3
    assert splits.train.images.shape[1:] == (3, 20, 20)
    assert len(splits.train) + len(splits.val) == N_TRAIN and len(splits.test) == len(LABELS)


def test_masks_follow_their_images_through_resize_and_crop(grey_root: Path) -> None:
    full = load_folder(grey_root, None, None, 1)
    doubled = load_folder(grey_root, 64, None, 1)
    np.testing.assert_array_equal(doubled.test_masks, full.test_masks.repeat(2, 1).repeat(2, 2))
    cropped = load_folder(grey_root, None, (15, 17), 1)  # centre: rows 8..22, columns 7..23
    np.testing.assert_array_equal(cropped.test, full.test[..., 8:23, 7:24])
    np.testing.assert_array_equal(cropped.test_masks, full.test_masks[:, 8:23, 7:24])


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_jpeg_images(tmp_path: Path, rgb: bool) -> None:
    data = load_folder(small(tmp_path, rgb, fmt="jpg"), None, None, "auto")
    assert data.preprocessing["channels"] == (3 if rgb else 1)
    assert data.train_names[0] == "train/good/000.jpg" and data.mask_known.all()
    assert data.test_masks.any(axis=(1, 2)).tolist() == [False] * 2 + [True] * 4
    error = np.abs(data.train.astype(int) - good_patches(rgb, 32, 4, seed=0)).mean()
    assert error < 8  # lossy, but the same crops


def test_train_only_folder_has_no_test_part(tmp_path: Path) -> None:
    root = small(tmp_path)
    shutil.rmtree(root / "test")
    shutil.rmtree(root / "ground_truth")
    data = load_folder(root, None, None, "auto")
    assert data.train.shape == (4, 1, 32, 32) and data.class_names == ["good"]
    assert data.test is data.test_labels is data.test_masks is data.mask_known is None
    assert data.test_names == []


def test_good_comes_first_then_defects_in_sorted_order(tmp_path: Path) -> None:
    root = small(tmp_path)
    for parent in ("test", "ground_truth"):
        (root / parent / "patch").rename(root / parent / "bent")
    data = load_folder(root, None, None, "auto")
    assert data.class_names == ["good", "bent", "scratch"]
    assert data.test_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.test_names[:3] == ["test/good/000.png", "test/good/001.png", "test/bent/000.png"]
    assert data.mask_known.all()


def test_defect_names_that_are_no_metric_key_fail_before_training(tmp_path: Path) -> None:
    # The per-defect metrics are logged as defects.image_roc_auc.<defect> after evaluate's
    # compute; MLflow refuses "(" there, so the name is checked where the folder is read.
    from mlflow.utils.validation import _validate_metric_name

    root = small(tmp_path)
    for parent in ("test", "ground_truth"):
        (root / parent / "patch").rename(root / parent / "hole small-2.x")
    data = load_folder(root, None, None, "auto")
    for name in data.class_names:
        _validate_metric_name(f"defects.image_roc_auc.{name}")
    for parent in ("test", "ground_truth"):
        (root / parent / "hole small-2.x").rename(root / parent / "hole (small)")
    with raises(root / "test" / "hole (small)", "may hold only letters, digits"):
        load_folder(root, None, None, "auto")
    # A name of the longest length allowed makes a valid key; one character more is refused.
    longest = "d" * MAX_DEFECT_NAME
    for parent in ("test", "ground_truth"):
        (root / parent / "hole (small)").rename(root / parent / longest)
    for name in load_folder(root, None, None, "auto").class_names:
        _validate_metric_name(f"defects.pixel_patch_knn.pixel_average_precision.{name}")
    for parent in ("test", "ground_truth"):
        (root / parent / longest).rename(root / parent / (longest + "d"))
    with raises(root / "test" / (longest + "d"), f"has {MAX_DEFECT_NAME + 1} characters"):
        load_folder(root, None, None, "auto")


def test_test_folder_with_only_good_images(tmp_path: Path) -> None:
    root = small(tmp_path)
    for folder in ("test/scratch", "test/patch", "ground_truth"):
        shutil.rmtree(root / folder)
    data = load_folder(root, None, None, "auto")
    assert data.class_names == ["good"] and data.test_labels.tolist() == [0, 0]
    assert data.mask_known.all() and not data.test_masks.any()


def test_images_without_a_mask_are_marked_unknown(tmp_path: Path) -> None:
    root = small(tmp_path)
    (root / "ground_truth" / "scratch" / "000_mask.png").unlink()
    shutil.rmtree(root / "ground_truth" / "patch")
    data = load_folder(root, None, None, "auto")
    assert data.test_names[4] == "test/scratch/000.png"
    assert data.mask_known.tolist() == [True, True, False, False, False, True]
    assert data.test_masks.any(axis=(1, 2)).tolist() == [False] * 5 + [True]


def test_files_hold_the_sha256_of_every_image_and_mask(tmp_path: Path) -> None:
    root = small(tmp_path)
    data = load_folder(root, None, None, "auto")
    expected = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")}
    assert len(expected) == 4 + 2 + 4 + 4
    assert data.files == expected


def test_hidden_files_are_ignored(tmp_path: Path) -> None:
    root = small(tmp_path)
    (root / "train" / "good" / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "test" / "patch" / "._000.png").write_bytes(b"AppleDouble")
    data = load_folder(root, None, None, "auto")
    assert len(data.train) == 4 and len(data.test) == 6


@pytest.mark.parametrize(
    ("name", "mode", "channels"),
    [
        ("000.bmp", "RGB", 3),
        ("000.TIFF", "RGB", 3),
        ("000.jpeg", "L", 1),
        ("000.png", "RGBA", 3),
        ("000.png", "P", 3),
        ("000.png", "LA", 1),
        ("000.png", "1", 1),
        ("000.tif", "I;16", 1),
    ],
)
def test_formats_and_modes(tmp_path: Path, name: str, mode: str, channels: int) -> None:
    root = small(tmp_path, rgb=channels == 3)
    original = root / "train" / "good" / "000.png"
    pixels = np.asarray(Image.open(original))
    if mode == "I;16":  # the 8-bit pixels as the high byte; /257 would round 255 up
        image, expected = Image.fromarray(pixels.astype(np.uint16) * 256 + 255), pixels
    else:  # what Pillow makes of the converted file: palette colours, 1-bit black and white
        image = Image.open(original).convert(mode)
        expected = np.asarray(image.convert("RGB" if channels == 3 else "L"))
    original.unlink()
    image.save(root / "train" / "good" / name)
    data = load_folder(root, None, None, "auto")
    assert (
        data.train_names[0] == f"train/good/{name}" and data.preprocessing["channels"] == channels
    )
    expected = expected[None] if channels == 1 else expected.transpose(2, 0, 1)
    difference = np.abs(data.train[0].astype(int) - expected).mean()
    assert difference < 8 if name.endswith("jpeg") else difference == 0


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        (256, None),  # 16-bit values in 32 bits: the high byte, as for I;16
        (1, "32-bit integer pixels all within 0..255: 8-bit values or a very dark 16-bit"),
        (65536, "outside 16-bit 0..65535; save the image as 8 or 16 bits"),
    ],
)
def test_32_bit_integer_images_are_read_only_when_unambiguous(
    tmp_path: Path, scale: int, message: str | None
) -> None:
    root = small(tmp_path)
    original = root / "train" / "good" / "000.png"
    pixels = np.asarray(Image.open(original))
    image = Image.fromarray(pixels.astype(np.int32) * scale + (scale > 1) * (scale // 2 - 1))
    assert image.mode == "I"
    original.unlink()
    image.save(root / "train" / "good" / "000.tif")
    if message is None:
        data = load_folder(root, None, None, "auto")
        np.testing.assert_array_equal(data.train[0, 0], pixels)
    else:
        with raises(root / "train" / "good" / "000.tif", message):
            load_folder(root, None, None, "auto")


def test_masks_may_be_any_supported_format(tmp_path: Path) -> None:
    root = small(tmp_path)
    mask = root / "ground_truth" / "patch" / "000_mask.png"
    expected = load_folder(root, None, None, "auto").test_masks
    Image.open(mask).save(mask.with_suffix(".bmp"))
    mask.unlink()
    data = load_folder(root, None, None, "auto")
    np.testing.assert_array_equal(data.test_masks, expected)
    assert str(mask.with_suffix(".bmp")) in data.files and data.mask_known.all()


def test_greyscale_file_among_rgb_becomes_rgb(tmp_path: Path) -> None:
    root = small(tmp_path, rgb=True)
    path = root / "train" / "good" / "001.png"
    Image.open(path).convert("L").save(path)
    data = load_folder(root, None, None, "auto")
    assert data.preprocessing["channels"] == 3
    assert (data.train[1] == data.train[1, :1]).all() and not (
        data.train[0] == data.train[0, :1]
    ).all()


def test_missing_root(tmp_path: Path) -> None:
    with raises(tmp_path / "nowhere", "no such folder; expected"):
        load_folder(tmp_path / "nowhere", None, None, "auto")


def test_missing_train_good_explains_the_layout(tmp_path: Path) -> None:
    root = small(tmp_path)
    shutil.rmtree(root / "train")
    with raises(
        root / "train" / "good", "test/<defect>/ and ground_truth/<defect>/<name>_mask.png"
    ):
        load_folder(root, None, None, "auto")


def test_empty_train_good(tmp_path: Path) -> None:
    root = small(tmp_path)
    for path in (root / "train" / "good").iterdir():
        path.unlink()
    with raises(root / "train" / "good", "holds no images"):
        load_folder(root, None, None, "auto")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "text"])
def test_corrupt_image_is_named(tmp_path: Path, damage: str) -> None:
    root = small(tmp_path)
    path = root / "test" / "good" / "001.png"
    intact = path.read_bytes()
    broken = {"garbage": bytes(range(256)) * 4, "truncated": intact[: len(intact) // 2]}
    path.write_bytes(broken.get(damage, b"just some notes, saved as .png\n"))
    with raises(path, "not a readable image"):
        load_folder(root, None, None, "auto")
    with raises(path, "not a readable image") as err:
        read_image_file(path)
    assert "object at 0x" not in str(err.value)  # Pillow's message names its buffer


@pytest.mark.parametrize("fmt", ["GIF", "PPM", "ICO", "EPS"])
def test_only_the_documented_formats_are_decoded_whatever_the_suffix(
    tmp_path: Path, fmt: str
) -> None:
    # Pillow opens any format it knows; an EPS named .png would reach Ghostscript.
    root = small(tmp_path)
    path = root / "train" / "good" / "000.png"
    with Image.open(path) as image:
        if fmt == "EPS":  # Pillow writes EPS only with Ghostscript: a minimal header will do
            path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n")
        else:
            image.convert("RGB" if fmt == "PPM" else "L").save(path, format=fmt)
    with raises(path, "not a readable image (not PNG, JPEG, BMP, TIFF)"):
        read_image_file(path)


def test_an_oversized_image_is_refused_from_its_header_before_decoding(tmp_path: Path) -> None:
    # A PNG's IHDR says 12000 x 12000 (144 MP, which Pillow only warns about); its data is
    # that of a 32 x 32 image, so decoding would fail later: the size check must come first.
    import struct
    import zlib

    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    header = b"IHDR" + struct.pack(">II", 12000, 12000) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    path.write_bytes(bytes(data))
    with raises(path, "12000x12000 pixels, above the 67 MP an image may have"):
        read_image_file(path)


def test_an_image_is_refused_by_its_decoded_bytes_before_decoding(tmp_path: Path) -> None:
    # 7500 x 7500 is within the pixel limit, but four bytes a pixel (RGBA) decode to 215 MiB,
    # above an RGB image's at the limit; the same header in grey (54 MiB) passes the check
    # and fails only when its missing data is decoded.
    import struct
    import zlib

    def forged(mode: str) -> Path:
        path = tmp_path / f"{mode}.png"
        Image.new(mode, (32, 32)).save(path)
        data = bytearray(path.read_bytes())
        header = b"IHDR" + struct.pack(">II", 7500, 7500) + bytes(data[24:29])
        data[12:29] = header
        data[29:33] = struct.pack(">I", zlib.crc32(header))
        path.write_bytes(bytes(data))
        return path

    rgba, grey = forged("RGBA"), forged("L")
    with raises(rgba, "7500x7500 RGBA pixels decode to 215 MiB, above the 192 MiB"):
        read_image_file(rgba)
    with raises(grey, "not a readable image"):
        read_image_file(grey)


def test_sixteen_bit_images_are_shifted_without_a_wider_copy(tmp_path: Path) -> None:
    # An int64 copy made a 0.4 MB 16-bit PNG cost gigabytes; the shift stays in 16 bits.
    import tracemalloc

    side = 2048
    pixels = np.tile(np.arange(side, dtype=np.uint16) * 32, (side, 1))
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    image = read_image_file(tmp_path / "deep.png")
    assert image.mode.startswith("I")
    tracemalloc.start()
    try:
        out = preprocess_image(image, None, None, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out[0], (pixels >> 8).astype(np.uint8))
    assert peak < 3 * pixels.nbytes, f"peak {peak / 2**20:.0f} MiB for an 8 MiB image"


def test_unsupported_file_is_named(tmp_path: Path) -> None:
    root = small(tmp_path)
    path = root / "test" / "scratch" / "notes.txt"
    path.write_text("defect notes")
    with raises(path, "not an image file"):
        load_folder(root, None, None, "auto")


def test_rgb_file_with_one_channel_is_refused(tmp_path: Path) -> None:
    root = small(tmp_path, rgb=True)
    with raises(root / "train" / "good" / "000.png", "set data.channels: auto or convert the file"):
        load_folder(root, None, None, 1)


def test_mask_of_the_wrong_size_names_both_files(tmp_path: Path) -> None:
    root = small(tmp_path)
    mask = root / "ground_truth" / "patch" / "001_mask.png"
    Image.open(mask).resize((16, 16), Image.NEAREST).save(mask)
    with raises(mask, f"its image {root / 'test' / 'patch' / '001.png'} is 32x32"):
        load_folder(root, None, None, "auto")


def test_mask_without_image(tmp_path: Path) -> None:
    root = small(tmp_path)
    mask = root / "ground_truth" / "scratch" / "007_mask.png"
    shutil.copy(root / "ground_truth" / "scratch" / "000_mask.png", mask)
    with raises(mask, "no image test/scratch/007.* for this mask"):
        load_folder(root, None, None, "auto")


def test_mask_folder_without_defect_folder(tmp_path: Path) -> None:
    root = small(tmp_path)
    shutil.rmtree(root / "test" / "scratch")
    with raises(root / "ground_truth" / "scratch", "no defect folder test/scratch/"):
        load_folder(root, None, None, "auto")


def test_test_folders_without_images(tmp_path: Path) -> None:
    root = small(tmp_path)
    shutil.rmtree(root / "test")
    shutil.rmtree(root / "ground_truth")
    (root / "test" / "good").mkdir(parents=True)
    (root / "test" / "crack").mkdir()
    with raises(root / "test", "no images in test/good/ or test/<defect>/"):
        load_folder(root, None, None, "auto")


def test_loose_file_in_test_and_masks_for_good_images(tmp_path: Path) -> None:
    root = small(tmp_path)
    shutil.copy(root / "test" / "good" / "000.png", root / "test" / "000.png")
    with raises(root / "test", "must hold only folders test/good/ and test/<defect>/"):
        load_folder(root, None, None, "auto")
    (root / "test" / "000.png").unlink()
    shutil.copytree(root / "ground_truth" / "patch", root / "ground_truth" / "good")
    with raises(root / "ground_truth" / "good", "one folder of masks per defect folder"):
        load_folder(root, None, None, "auto")


def test_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    root = small(tmp_path)
    path = root / "test" / "good" / "001.png"
    Image.open(path).resize((40, 40), Image.BILINEAR).save(path)
    with raises(path, "40x40 pixels but"):
        load_folder(root, None, None, "auto")
    with pytest.raises(DataError, match="set data.image_size"):
        load_folder(root, None, None, "auto")
    assert load_folder(root, 32, None, "auto").test.shape == (6, 1, 32, 32)


def test_crop_larger_than_the_image(tmp_path: Path) -> None:
    root = small(tmp_path)
    with raises(root / "train" / "good" / "000.png", "crop 40x40 (height x width) is larger"):
        load_folder(root, None, 40, "auto")


@pytest.mark.parametrize(
    ("image_size", "crop", "channels", "key"),
    [
        (0, None, 1, "data.image_size"),
        ((32, 32, 3), None, 1, "data.image_size"),
        (None, 2.5, 1, "data.crop"),
        (None, None, 2, "data.channels"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, image_size, crop, channels, key) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_folder(small(tmp_path), image_size, crop, channels)
