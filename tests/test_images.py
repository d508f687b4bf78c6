"""User images: PNG folders and arrays, read strictly."""

import numpy as np
import pytest
from PIL import Image

from convvae.data.image_files import Resize, image_names, load_images
from convvae.data.images import save_png
from convvae.errors import DataError

SHAPE = (1, 28, 28)


def digits(n=3):
    return np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def test_png_folder_round_trip(tmp_path):
    images = digits()
    for i, image in enumerate(images):
        save_png(image, tmp_path / f"d{i}.png")
    batch = load_images(tmp_path, SHAPE)
    np.testing.assert_array_equal(batch.images, images)
    assert batch.names == ["d0.png", "d1.png", "d2.png"]


def test_arrays_uint8_float_and_channelless(tmp_path):
    images = digits()
    np.save(tmp_path / "a.npy", images[:, 0])  # (N, H, W)
    np.testing.assert_array_equal(load_images(tmp_path / "a.npy", SHAPE).images, images)
    np.savez(tmp_path / "b.npz", images=images.astype(np.float32) / 255)
    np.testing.assert_array_equal(load_images(tmp_path / "b.npz", SHAPE).images, images)
    assert load_images(tmp_path / "b.npz", SHAPE).names[2] == "b.npz[2]"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: np.save(p / "x.npy", np.zeros((2, 32, 32), np.uint8)), "not resized"),
        (lambda p: np.save(p / "x.npy", np.zeros((2, 3, 28, 28), np.uint8)), "expects"),
        (lambda p: np.save(p / "x.npy", np.full((2, 28, 28), 2.0)), r"\[0, 1\]"),
        (lambda p: np.save(p / "x.npy", np.zeros((2, 28, 28), np.int64)), "dtype int64"),
        (lambda p: (p / "x.npy").write_bytes(b"not numpy"), "unreadable"),
        (lambda p: np.savez(p / "x.npz", a=np.zeros(1), b=np.zeros(1)), "name the image array"),
    ],
)
def test_bad_arrays_are_one_line_errors(tmp_path, make, message):
    make(tmp_path)
    target = next(tmp_path.iterdir())
    with pytest.raises(DataError, match=message) as err:
        load_images(target, SHAPE)
    assert "\n" not in str(err.value) and str(target) in str(err.value)


def test_bad_folders(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_images(tmp_path, SHAPE)
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(tmp_path / "big.png")
    with pytest.raises(DataError, match="32x32 pixels.*28x28"):
        load_images(tmp_path, SHAPE)
    (tmp_path / "big.png").unlink()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8), mode="RGB").save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="mode RGB"):
        load_images(tmp_path, SHAPE)
    (tmp_path / "rgb.png").unlink()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="is not an image"):
        load_images(tmp_path, SHAPE)
    with pytest.raises(DataError, match="no such file"):
        load_images(tmp_path / "absent", SHAPE)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
@pytest.mark.parametrize("resize", [None, Resize((28, 28))])
def test_colour_for_a_grey_model_is_refused_without_pointing_at_resize(tmp_path, mode, resize):
    # --resize converts sizes and grey to RGB, never colour to grey: the message must not
    # send the user to it, nor to data.channels (a params.yaml key that scoring ignores).
    rgb = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").convert(mode).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=f"mode {mode} \\(colour\\), the model takes grey") as err:
        load_images(tmp_path, SHAPE, resize)
    assert "--resize" not in str(err.value) and "data.channels" not in str(err.value)


def test_image_names_are_the_folders_files_without_reading_them(tmp_path):
    for name in ("b.png", "a.bmp", "a.png"):
        (tmp_path / name).write_bytes(b"")  # not read: only the names
    assert image_names(tmp_path) == ["a.bmp", "a.png", "b.png"]
    np.save(tmp_path / "x.npy", digits())
    assert image_names(tmp_path / "x.npy") == []
