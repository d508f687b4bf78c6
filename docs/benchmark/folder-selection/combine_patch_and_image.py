"""Patch and whole-image evidence together? Read from select_adaptive.py's raw scores.

Every score is standardised by its mean and spread on the held-out normal images of its folder
(the selection half of the validation images, as the reference does it); the combinations are
means (or the maximum) of standardised scores. Printed per folder: the ROC-AUC on each synthetic
family (held-out normal vs the same images made anomalous), their mean, and on the folder's
test part.

    python docs/benchmark/folder-selection/combine_patch_and_image.py \
        docs/benchmark/folder-selection/patch-and-image/*.npz
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

FAMILIES = ("cutpaste", "meanfill", "jigsaw")


def combinations(z: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        **z,
        "guarded+fused": (z["patch_knn_guarded"] + z["fused"]) / 2,
        "max(guarded,fused)": np.maximum(z["patch_knn_guarded"], z["fused"]),
        "guarded+cosine": (z["patch_knn_guarded"] + z["cosine_knn"]) / 2,
        "guarded+hidden": (z["patch_knn_guarded"] + z["hidden_knn"]) / 2,
        "guarded+fused+cosine": (z["patch_knn_guarded"] + z["fused"] + z["cosine_knn"]) / 3,
    }


def main() -> None:
    test_means: dict[str, list[float]] = {}
    for path in sys.argv[1:]:
        raw = np.load(path)
        names = [key.split(".", 1)[1] for key in raw if key.startswith("normal.")]
        center = {n: raw[f"normal.{n}"].mean() for n in names}
        spread = {n: raw[f"normal.{n}"].std() + 1e-12 for n in names}

        def part(prefix: str, raw=raw, names=names, center=center, spread=spread) -> dict:
            return combinations({n: (raw[f"{prefix}.{n}"] - center[n]) / spread[n] for n in names})

        normal, test = part("normal"), part("test")
        defective = (raw["test_labels"] != 0).astype(int)
        n = len(raw["normal.fused"])
        print(f"== {Path(path).stem}: {n} held-out normal images")
        for name in test:
            synthetic = [roc_auc_score(np.r_[np.zeros(n), np.ones(n)],
                                       np.r_[normal[name], part(f"synthetic.{f}")[name]])
                         for f in FAMILIES]  # fmt: skip
            on_test = roc_auc_score(defective, test[name])
            test_means.setdefault(name, []).append(on_test)
            print(f"  {name:22s} synthetic " + " ".join(f"{s:.3f}" for s in synthetic)
                  + f"  mean {np.mean(synthetic):.3f}   test {on_test:.3f}")  # fmt: skip
    print("== mean test ROC-AUC over the folders (worst folder)")
    for name, values in sorted(test_means.items(), key=lambda item: -np.mean(item[1])):
        print(f"  {name:22s} {np.mean(values):.3f} ({min(values):.3f})")


if __name__ == "__main__":
    main()
