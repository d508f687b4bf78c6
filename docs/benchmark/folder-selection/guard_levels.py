"""The guard level of patch_knn_guarded on the two selection textures where it matters most
(grass: normal tiles of very different contrast; coffee: smooth tiles close to nearly flat
frames): defect ROC-AUC (select_patch_or_fused.py's tiles and defects) and nearly-flat ROC-AUC
against the normal held-out tiles, per level. Output quoted in README.md.

    PYTHONPATH=src python docs/benchmark/folder-selection/guard_levels.py
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.outofdomain import nearly_flat
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.config import parse_params
from convvae.data.splits import selection_and_calibration

sys.path.insert(0, str(Path(__file__).parent))
from select_patch_or_fused import synthetic_defects, tiles  # noqa: E402

NAMES = ("patch_knn", "contrast_knn")


def standardised(scorer, images, center, spread) -> dict[str, np.ndarray]:
    found = every_score(scorer, images, NAMES)
    return {n: (found[n] - center[n]) / spread[n] for n in NAMES}


def guarded(z: dict[str, np.ndarray], guard: float) -> np.ndarray:
    return z["patch_knn"] + np.clip(z["contrast_knn"] - guard, 0, None)


def main() -> None:
    params = parse_params({"data": {"source": "folder", "path": "unused"}})
    for name, size in [("grass", 32), ("coffee", 32)]:
        images = tiles(name, size, 330, seed=0)
        train, val, held = images[:200], images[200:250], images[250:]
        test = np.concatenate([held[40:], synthetic_defects(held[:40], np.random.default_rng(1))])
        fitted = train_and_fit(params.model, params.train, params.anomaly, train, val,
                               log=lambda line: None)  # fmt: skip
        scorer = Scorer(fitted.training.model, fitted.reference, ScoreSpec("patch_knn", 8, 0))
        selection, _ = selection_and_calibration(val)
        stats = every_score(scorer, selection, NAMES)
        center = {n: stats[n].mean() for n in NAMES}
        spread = {n: stats[n].std() for n in NAMES}
        flat = nearly_flat((40, *test.shape[1:]), np.random.default_rng(2))
        z_test, z_normal, z_flat = (
            standardised(scorer, batch, center, spread) for batch in (test, held[40:], flat)
        )
        print(f"{name}: normal tiles' contrast z up to {z_normal['contrast_knn'].max():.2f}, "
              f"nearly flat frames' from {z_flat['contrast_knn'].min():.2f}")  # fmt: skip
        both = np.r_[np.zeros(40), np.ones(40)]
        for guard in (2, 3, 4, 5, 6, 8):
            defects = roc_auc_score(both, guarded(z_test, guard))
            frames = roc_auc_score(both, np.r_[guarded(z_normal, guard), guarded(z_flat, guard)])
            print(f"  guard {guard}: defects {defects:.3f}, nearly flat {frames:.3f}")


if __name__ == "__main__":
    main()
