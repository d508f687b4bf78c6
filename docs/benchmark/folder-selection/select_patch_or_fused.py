"""Should a folder's default score add whole-image evidence to its most unusual patch? On the
selection textures of select_map_and_score.py (the same tiles and synthetic defects: cut-paste
rectangles and colour discs; never the tests' scratches and foreign patches, never other
photographs), plus generated degenerate frames (flat and nearly flat, any brightness), never on
test images:

- ``patch_knn`` (the default until now): the maximum of the smoothed patch map;
- ``fused``: the whole-image score of the class sources (deviance + three distances, z-scored);
- ``patch_or_fused``: the larger of the two, each standardised on the held-out normal tiles
  that fit the reference (the selection half);
- ``patch_or_contrast``: the larger of the standardised patch_knn and contrast_knn (the fused
  score's flat-frame part alone);
- ``patch_plus_contrast_tail``: the standardised patch_knn plus how far the standardised
  contrast_knn lies beyond 3 (nothing for nearly every normal image, a lot for a flat frame).

Per texture: one model (the pipeline's folder defaults), image ROC-AUC of each score on the
held-out tiles (half with one defect), and against the degenerate sets. One JSON line per
texture/size in --out.

    PYTHONPATH=src python docs/benchmark/folder-selection/select_patch_or_fused.py \
        --out patch_or_fused.jsonl
"""

import argparse
import json

import numpy as np
import skimage.data
from sklearn.metrics import roc_auc_score

from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.outofdomain import nearly_flat
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.config import parse_params
from convvae.data.splits import selection_and_calibration

TEXTURES = [("brick", 32), ("grass", 32), ("immunohistochemistry", 32), ("coffee", 32),
            ("brick", 64), ("immunohistochemistry", 64)]  # fmt: skip


def tiles(name: str, size: int, n: int, seed: int) -> np.ndarray:
    """As select_map_and_score.py draws them."""
    photo = getattr(skimage.data, name)()
    photo = photo[::2, ::2] if min(photo.shape[:2]) > 4 * size else photo
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        top = rng.integers(0, photo.shape[0] - size)
        left = rng.integers(0, photo.shape[1] - size)
        tile = photo[top : top + size, left : left + size]
        out.append(tile[None] if tile.ndim == 2 else tile[..., :3].transpose(2, 0, 1))
    return np.stack(out).astype(np.uint8)


def synthetic_defects(images: np.ndarray, rng) -> np.ndarray:
    """As select_map_and_score.py makes them: even images a brightness-jittered rectangle copied
    from elsewhere in the tile, odd images a disc of one random colour."""
    out = images.copy()
    _, channels, height, width = images.shape
    for i in range(len(images)):
        side = rng.integers(height // 6, height // 3)
        top, left = rng.integers(0, height - side), rng.integers(0, width - side)
        if i % 2 == 0:
            src_top, src_left = rng.integers(0, height - side), rng.integers(0, width - side)
            source = images[i, :, src_top : src_top + side, src_left : src_left + side]
            shifted = np.clip(source.astype(int) + rng.integers(-40, 40), 0, 255)
            out[i, :, top : top + side, left : left + side] = shifted
        else:
            rows, cols = np.mgrid[:height, :width]
            disc = (rows - top - side / 2) ** 2 + (cols - left - side / 2) ** 2 < (side / 2) ** 2
            out[i][:, disc] = rng.integers(0, 256, size=(channels, 1))
    return out


def run(name: str, size: int, params) -> dict:
    images = tiles(name, size, 330, seed=0)
    train, val, held = images[:200], images[200:250], images[250:]
    rng = np.random.default_rng(1)
    defective = synthetic_defects(held[:40], rng)
    test = np.concatenate([held[40:], defective])
    labels = np.r_[np.zeros(40), np.ones(40)]
    fitted = train_and_fit(params.model, params.train, params.anomaly, train, val,
                           log=lambda line: None)  # fmt: skip
    scorer = Scorer(fitted.training.model, fitted.reference, ScoreSpec("patch_knn", 8, 0))
    selection, _ = selection_and_calibration(val)
    names = ("patch_knn", "fused", "contrast_knn")
    stats = every_score(scorer, selection, names)
    center = {n: stats[n].mean() for n in names}
    spread = {n: stats[n].std() + 1e-12 for n in names}

    def scores(batch):
        found = every_score(scorer, batch, names)
        z = {n: (found[n] - center[n]) / spread[n] for n in names}
        return {
            **found,
            "patch_or_fused": np.maximum(z["patch_knn"], z["fused"]),
            "patch_or_contrast": np.maximum(z["patch_knn"], z["contrast_knn"]),
            "patch_plus_contrast_tail": z["patch_knn"] + np.clip(z["contrast_knn"] - 3, 0, None),
        }

    normal, tested = scores(held[40:]), scores(test)
    rng = np.random.default_rng(2)
    flat = np.broadcast_to(rng.integers(0, 256, (40, test.shape[1], 1, 1)), (40, *test.shape[1:]))
    sets = {"flat": flat.astype(np.uint8), "nearly_flat": nearly_flat((40, *test.shape[1:]), rng)}
    result = {"texture": name, "size": size, "defects": {}, "degenerate": {}}
    for method, values in tested.items():
        result["defects"][method] = float(roc_auc_score(labels, values))
    for set_name, frames in sets.items():
        odd = scores(frames)
        both = np.r_[np.zeros(40), np.ones(40)]
        result["degenerate"][set_name] = {
            m: float(roc_auc_score(both, np.r_[normal[m], odd[m]])) for m in odd
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    params = parse_params({"data": {"source": "folder", "path": "unused"}})
    for name, size in TEXTURES:
        result = run(name, size, params)
        with open(args.out, "a") as out:
            out.write(json.dumps(result) + "\n")
        defects = {m: round(v, 3) for m, v in result["defects"].items()}
        flat = {s: {m: round(v, 3) for m, v in d.items()} for s, d in result["degenerate"].items()}
        print(name, size, defects, flat)


if __name__ == "__main__":
    main()
