"""Evaluation folders: material and defect kinds that chose no score, map or likelihood.

Three generated folders, each one MVTec AD category, run as a user runs it (a copy of the
repository, ``data.source: folder``, every default; docs/benchmark/elpv.py runs the fourth, the
held-out polycrystalline ELPV cells with real defects):

- ``moon`` (grey surface, 48x48 tiles saved as JPEG quality 90): tiles of scikit-image's moon
  photograph; defects ``stain`` (a soft-edged ellipse darker or brighter by 25-45%), ``blur``
  (an ellipse blurred with a Gaussian of sigma 2) and ``speckle`` (an ellipse of added noise),
  with masks;
- ``china`` (RGB photograph, 64x64 tiles): tiles of scikit-learn's china photograph, the same
  three defect kinds;
- ``faces`` (aligned objects, grey, 25x25 resized to 32x32): scikit-image's ``lfw_subset``, 70
  faces to train on, 30 to test; ``nonface`` (the subset's 100 images that are not faces, 50 of
  them) and ``occluded`` (a face with a rectangle of uniform noise over a fifth of it), no masks.

None of these photographs, categories or defect kinds chose a score, map or likelihood
(docs/benchmark/folder-selection: textures brick, grass, gravel, coffee, immunohistochemistry,
the monocrystalline ELPV cells and the 7s of mnist-5k, with scratches, foreign patches, cut-paste
rectangles, colour discs, mean-filled rectangles, shuffled quadrants, erased bands, extra strokes
and gravel tiles). Moon and china were among the 22 photographs of docs/benchmark/calibration,
which chose only how thresholds are calibrated (not what any ROC-AUC here measures).

    .venv/bin/python docs/benchmark/evaluation_folders.py   # about 15 minutes on 2 CPU cores

Writes docs/benchmark/evaluation/README.md (with the ELPV cells from docs/benchmark/elpv/) and
results.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image
from scipy import ndimage
from sklearn.datasets import load_sample_images

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "docs/benchmark")]
from folder_runs import IMAGE_PEERS, evaluate_folder, margin_cell, synthetic_cell  # noqa: E402

from tests.e2e.project import make_project  # noqa: E402

OUT = REPO / "docs/benchmark/evaluation"
KINDS = ("stain", "blur", "speckle")
IMAGE_COLUMNS = [
    ("ours (default)", "image_roc_auc"),
    ("ours: patch_knn_guarded", "patch_knn_guarded.image_roc_auc"),
    ("ours: fused", "fused.image_roc_auc"),
    *IMAGE_PEERS,
]
PIXEL_COLUMNS = [
    ("pixel, ours", "pixel_roc_auc"),
    ("pixel, deviance map", "deviance_map.pixel_roc_auc"),
    ("pixel, per-pixel Gaussian", "gaussian_zscore.pixel_roc_auc"),
    ("pixel, raw-pixel patch kNN", "pixel_patch_knn.pixel_roc_auc"),
]


def ellipse(rng, height: int, width: int) -> np.ndarray:
    """A random ellipse mask, 1/8 to 1/4 of the side across."""
    rows, cols = np.mgrid[:height, :width]
    ry, rx = rng.uniform(height / 16, height / 8), rng.uniform(width / 16, width / 8)
    cy, cx = rng.uniform(ry, height - ry), rng.uniform(rx, width - rx)
    return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1


def defect(tile: np.ndarray, kind: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """tile uint8 (H, W, C) → (defective tile, mask uint8 0/255): the first of 50 placements
    that changes the masked pixels by 6 grey levels on average (a blur on a flat region, or a
    brighter stain on white sky, would change nothing, and its mask would mark nothing)."""
    for _ in range(50):
        changed, mask = _placed(tile, kind, rng)
        if np.abs(changed.astype(int) - tile)[mask > 0].mean() >= 6:
            break
    return changed, mask


def _placed(tile: np.ndarray, kind: str, rng) -> tuple[np.ndarray, np.ndarray]:
    height, width = tile.shape[:2]
    mask = ellipse(rng, height, width)
    pixels = tile.astype(np.float64)
    if kind == "stain":  # soft-edged: the change fades over two pixels
        soft = ndimage.gaussian_filter(mask.astype(float), 1.0)[..., None]
        factor = 1 + rng.choice([-1, 1]) * rng.uniform(0.25, 0.45)
        changed = pixels * (1 + (factor - 1) * soft)
    elif kind == "blur":
        blurred = ndimage.gaussian_filter(pixels, sigma=(2, 2, 0))
        changed = np.where(mask[..., None], blurred, pixels)
    else:  # speckle
        noise = rng.normal(0, 40, pixels.shape)
        changed = np.where(mask[..., None], pixels + noise, pixels)
    return np.clip(np.rint(changed), 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


def save(pixels: np.ndarray, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path, **options)


def photo_folder(root: Path, photo: np.ndarray, size: int, suffix: str, seed: int) -> None:
    """200 train/good, 60 test/good and 25 of each defect kind, tiles of ``photo``."""
    rng = np.random.default_rng(seed)
    photo = photo[..., None] if photo.ndim == 2 else photo[..., :3]
    total = 200 + 60 + 25 * len(KINDS)
    rows = rng.integers(0, photo.shape[0] - size + 1, total)
    cols = rng.integers(0, photo.shape[1] - size + 1, total)
    tiles = [photo[r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)]
    options = {"quality": 90} if suffix == "jpg" else {}
    for i, tile in enumerate(tiles[:200]):
        save(tile, root / "train/good" / f"{i:03d}.{suffix}", **options)
    for i, tile in enumerate(tiles[200:260]):
        save(tile, root / "test/good" / f"{i:03d}.{suffix}", **options)
    for k, kind in enumerate(KINDS):
        for i, tile in enumerate(tiles[260 + 25 * k : 260 + 25 * (k + 1)]):
            changed, mask = defect(tile, kind, rng)
            save(changed, root / "test" / kind / f"{i:03d}.{suffix}", **options)
            save(mask[..., None], root / "ground_truth" / kind / f"{i:03d}_mask.png")


def faces_folder(root: Path, seed: int = 0) -> None:
    images = np.rint(255 * skimage.data.lfw_subset()).astype(np.uint8)[..., None]
    faces, others = images[:100], images[100:]
    rng = np.random.default_rng(seed)
    faces, others = faces[rng.permutation(100)], others[rng.permutation(100)]
    for i, face in enumerate(faces[:70]):
        save(face, root / "train/good" / f"{i:03d}.png")
    for i, face in enumerate(faces[70:]):
        save(face, root / "test/good" / f"{i:03d}.png")
    for i, other in enumerate(others[:50]):
        save(other, root / "test/nonface" / f"{i:03d}.png")
    for i, face in enumerate(faces[rng.permutation(100)[:30]]):
        face = face.copy()  # occluded faces are drawn from all 100 faces, as damaged copies
        top, left = rng.integers(0, 25 - 11, 2)
        face[top : top + 11, left : left + 11] = rng.integers(0, 256, (11, 11, 1))
        save(face, root / "test/occluded" / f"{i:03d}.png")


FOLDERS = {
    "moon": lambda root: photo_folder(root, skimage.data.moon(), 48, "jpg", seed=1),
    "china": lambda root: photo_folder(root, load_sample_images().images[0], 64, "png", seed=2),
    "faces": faces_folder,
}
DESCRIPTION = {"moon": "grey surface, 48 px JPEG", "china": "RGB photograph, 64 px",
               "faces": "aligned faces, grey, 32 px"}  # fmt: skip


def run_folder(name: str, scratch: Path) -> dict:
    project = make_project(scratch / f"project-{name}")
    FOLDERS[name](scratch / name)
    size = 32 if name == "faces" else None
    found = evaluate_folder(project, scratch / name, samples=8, image_size=size)
    return {"folder": name, "description": DESCRIPTION[name], **found}


def render(rows: list[dict]) -> str:
    columns = IMAGE_COLUMNS + PIXEL_COLUMNS
    head = "| folder | " + " | ".join(title for title, _ in columns)
    lines = [head + " | margin over the best VAE-free (image) | synthetic-anomaly check "
             "(own normal images) | seconds |", "|" + "---|" * (len(columns) + 4)]  # fmt: skip
    for row in rows:
        cells = [f"{100 * row[key]:.1f}" if key in row else "–" for _, key in columns]
        tail = f" | {margin_cell(row)} | {synthetic_cell(row)} | {row['seconds']:.0f} |"
        lines.append(f"| {row['folder']} ({row['description']}) | " + " | ".join(cells) + tail)
    return "\n".join(lines)


def elpv_rows() -> list[dict]:
    """The held-out ELPV cells, from docs/benchmark/elpv.py's results."""
    path = REPO / "docs/benchmark/elpv/64px.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    described = {"folder": "elpv-poly", "description": "real solar-cell defects, grey, 64 px"}
    return [{**row, **described} for row in rows if row["role"] == "held out"]


def main() -> None:
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    names = sys.argv[1:] or list(FOLDERS)
    with tempfile.TemporaryDirectory() as scratch:
        rows = [run_folder(name, Path(scratch)) for name in names]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    table = render(elpv_rows() + rows)
    (OUT / "README.md").write_text(
        "# Evaluation folders: nothing here chose a default\n\n"
        f"Made by `docs/benchmark/evaluation_folders.py` on {time.strftime('%Y-%m-%d')} (2 CPU "
        f"cores), every default of a folder source ({rows[0]['default_score']}); the ELPV row is "
        "docs/benchmark/elpv.py's held-out polycrystalline cells. ROC-AUC ×100 (chance 50.0); "
        "margin: the default's image ROC-AUC minus the best method without a trained VAE on that "
        "folder, with its paired bootstrap interval. What each folder is, and why none chose "
        "anything: the script's docstring.\n\n" + table + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()
