"""Can a folder choose its own score from its normal images alone? On selection folders only.

Per folder: one model with the folder defaults, trained as the pipeline trains it. On the
selection half of the normal validation images (held out from training, what fits the
reference), synthetic anomalies are made from those same normal images, one per image and
family:

- ``cutpaste``: a rectangle (1/6 to 1/3 of the side) of another held-out normal image pasted at
  a random place (CutPaste, Li et al. 2021, with the patch from another image);
- ``meanfill``: a rectangle filled with its own mean colour (detail missing);
- ``jigsaw``: the image's four quadrants in another order (parts in the wrong place).

Each candidate score's ROC-AUC on held-out normal vs synthetic images is printed beside its
ROC-AUC on the folder's test images (real or generated defects). The question: does the
candidate with the best synthetic ROC-AUC also rank the test images best?

    PYTHONPATH=src python docs/benchmark/folder-selection/select_adaptive.py FOLDER SIZE \
        [--out adaptive.jsonl]
"""

import argparse
import json
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.config import parse_params
from convvae.data.splits import load_configured, selection_and_calibration

FAMILIES = ("cutpaste", "meanfill", "jigsaw")
CANDIDATES = ("patch_knn_guarded", "fused", "hidden_knn", "cosine_knn", "excess_nll",
              "contrast_knn", "patch_knn")  # fmt: skip


def rectangle(rng, height: int, width: int) -> tuple[int, int, int, int]:
    side_h = int(rng.integers(max(2, height // 6), max(3, height // 3) + 1))
    side_w = int(rng.integers(max(2, width // 6), max(3, width // 3) + 1))
    return (
        int(rng.integers(0, height - side_h + 1)),
        int(rng.integers(0, width - side_w + 1)),
        side_h,
        side_w,
    )


def synthetic(images: np.ndarray, family: str, rng) -> np.ndarray:
    out = images.copy()
    n, _, height, width = images.shape
    for i in range(n):
        top, left, h, w = rectangle(rng, height, width)
        if family == "cutpaste":
            other = images[(i + 1 + int(rng.integers(0, n - 1))) % n]
            src_top, src_left, _, _ = rectangle(rng, height - h + 1, width - w + 1)
            out[i, :, top : top + h, left : left + w] = other[
                :, src_top : src_top + h, src_left : src_left + w
            ]
        elif family == "jigsaw":  # the four quadrants in another order: parts in the wrong place
            half_h, half_w = height // 2, width // 2
            quads = [
                images[i, :, r : r + half_h, c : c + half_w]
                for r in (0, half_h)
                for c in (0, half_w)
            ]
            order = rng.permutation(4)
            while (order == np.arange(4)).all():
                order = rng.permutation(4)
            for slot, source in enumerate(order):
                r, c = (slot // 2) * half_h, (slot % 2) * half_w
                out[i, :, r : r + half_h, c : c + half_w] = quads[source]
        else:
            block = images[i, :, top : top + h, left : left + w].reshape(images.shape[1], -1)
            out[i, :, top : top + h, left : left + w] = (
                block.mean(1).round().astype(np.uint8)[:, None, None]
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("size", type=int)
    parser.add_argument("--out")
    parser.add_argument("--scores", help="an .npz file for every raw score")
    args = parser.parse_args()
    data = {"source": "folder", "path": args.folder, "image_size": args.size}
    params = parse_params({"data": data, "train": {"epochs": 30}})
    started = time.perf_counter()
    _, splits = load_configured(params.data)
    val = splits.val.images
    fitted = train_and_fit(params.model, params.train, params.anomaly, splits.train.images, val,
                           log=lambda line: None)  # fmt: skip
    scorer = Scorer(fitted.training.model, fitted.reference, ScoreSpec("patch_knn", 8, 0))
    selection, _ = selection_and_calibration(val)
    rng = np.random.default_rng(0)
    normal = every_score(scorer, selection, CANDIDATES)
    result = {"folder": args.folder, "size": args.size, "held_out_normal": len(selection),
              "synthetic": {}, "test": {}}  # fmt: skip
    synthetic_scores = {}
    for family in FAMILIES:
        odd = synthetic_scores[family] = every_score(
            scorer, synthetic(selection, family, rng), CANDIDATES
        )
        labels = np.r_[np.zeros(len(selection)), np.ones(len(selection))]
        result["synthetic"][family] = {
            name: float(roc_auc_score(labels, np.r_[normal[name], odd[name]]))
            for name in CANDIDATES
        }
    test = every_score(scorer, splits.test.images, CANDIDATES)
    if args.scores:  # every raw score, to try combinations without training again
        raw = {f"normal.{k}": v for k, v in normal.items()}
        raw |= {f"synthetic.{f}.{k}": v for f, d in synthetic_scores.items() for k, v in d.items()}
        raw |= {f"test.{k}": v for k, v in test.items()}
        np.savez(args.scores, **raw, test_labels=splits.test.labels)
    labels = (splits.test.labels != 0).astype(int)
    result["test"] = {name: float(roc_auc_score(labels, test[name])) for name in CANDIDATES}
    result["seconds"] = time.perf_counter() - started
    if args.out:
        with open(args.out, "a") as out:
            out.write(json.dumps(result) + "\n")
    for name in CANDIDATES:
        synth = " ".join(f"{result['synthetic'][f][name]:.3f}" for f in FAMILIES)
        print(f"{name:18s} synthetic {synth}  test {result['test'][name]:.3f}")


if __name__ == "__main__":
    main()
