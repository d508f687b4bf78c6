"""Does a small folder's threshold keep its promise? For each of 22 photographs (scikit-image's,
scikit-learn's and matplotlib's sample images, each a different photograph), a folder of 30
normal 32x32 tiles trains a model with the pipeline's defaults for a folder (patch_knn), and its
threshold is calibrated twice: split conformal on the validation half (30 images: 3 validation
images, 1 of them calibrates) and cross-fitted on all 30 (the default, ``anomaly.calibration:
auto``). 2,000 more tiles of the same photograph, never seen, measure each threshold's realised
false-positive rate (with its exact 95% binomial interval: 2,000 tiles still leave a rate of
0.2% unseen one time in fifty), beside the range the record states (``expected_fpr_90``, the
5th-95th percentile of the rate over calibration sets). One JSON line per folder in --out.

    PYTHONPATH=src python docs/benchmark/calibration/small_folders.py --out small_folders.jsonl
    python docs/benchmark/calibration/summarize.py small_folders.jsonl
"""

import argparse
import gzip
import json
import time
from pathlib import Path

import matplotlib
import numpy as np
import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

from convvae.anomaly.calibration import calibrate_split_or_cross_fit, plan_calibration
from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import score_images
from convvae.config import AnomalyConfig, load_params, parse_params
from convvae.metrics.stats import clopper_pearson

SKIMAGE = ["astronaut", "brick", "camera", "chelsea", "cell", "clock", "coffee", "coins",
           "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page",
           "retina", "rocket", "text"]  # fmt: skip
MATPLOTLIB = ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"]
TILE, N_FOLDER, N_HELD_OUT = 32, 30, 2000


def photographs() -> dict[str, np.ndarray]:
    """Every photograph as uint8 (H, W) or (H, W, 3)."""
    found = {name: getattr(skimage.data, name)() for name in SKIMAGE}
    for name, image in zip(("china", "flower"), load_sample_images().images, strict=True):
        found[name] = image
    sample_data = Path(matplotlib.get_data_path()) / "sample_data"
    for name in MATPLOTLIB:
        found[name] = np.asarray(Image.open(sample_data / name).convert("RGB"))
    with gzip.open(sample_data / "s1045.ima.gz") as raw:  # a 256x256 16-bit MRI slice
        mri = np.frombuffer(raw.read(), "<u2").reshape(256, 256).astype(np.float64)
    found["mri"] = np.rint(255 * mri / mri.max()).astype(np.uint8)
    return found


def tiles(photo: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random TILE x TILE crops, uint8 (n, C, TILE, TILE)."""
    rows = rng.integers(0, photo.shape[0] - TILE + 1, n)
    cols = rng.integers(0, photo.shape[1] - TILE + 1, n)
    crops = np.stack([photo[r : r + TILE, c : c + TILE] for r, c in zip(rows, cols, strict=True)])
    return crops.transpose(0, 3, 1, 2) if crops.ndim == 4 else crops[:, None]


def run_folder(name: str, photo: np.ndarray, params, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    folder, held_out = tiles(photo, N_FOLDER, rng), tiles(photo, N_HELD_OUT, rng)
    n_val = round(params.data.val_fraction * N_FOLDER)  # as make_splits draws them
    train, val = folder[n_val:], folder[:n_val]
    started = time.perf_counter()
    recipe = (params.model, params.train, params.anomaly)
    fitted = train_and_fit(*recipe, train, val, log=lambda line: None)
    scorer = Scorer(fitted.training.model, fitted.reference, ScoreSpec.from_config(params.anomaly))
    held_scores = score_images(scorer, held_out)
    result = {"photograph": name, "channels": int(folder.shape[1]), "train": len(train)}
    for method in ("split", "cross_fit"):
        cfg = AnomalyConfig(**{**params.anomaly.__dict__, "calibration": method})
        plan = plan_calibration(cfg, len(val), N_FOLDER)
        record = calibrate_split_or_cross_fit(scorer, plan, (params.model, params.train, cfg),
                                              train, val, params.data.val_fraction)  # fmt: skip
        stored = record.as_json()
        flagged = int(np.sum(held_scores > record.threshold))
        realised = flagged / len(held_scores)
        measured = clopper_pearson(flagged, len(held_scores))
        low, high = stored["expected_fpr_90"]
        result[method] = {
            "calibration_images": stored["calibration_images"],
            "realised_fpr": realised,
            "realised_fpr_95": list(measured),
            "expected_fpr_90": [low, high],
            "within": bool(low <= realised <= high),
            # consistent with the stated range, given the held-out estimate's own error
            "consistent": bool(measured[0] <= high and measured[1] >= low),
        }
    result["seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # A folder's defaults (score, likelihood) as params.yaml resolves them for data.source: folder.
    raw = load_params(args.params).to_dict()
    raw["data"] |= {"source": "folder", "path": "unused"}
    raw["anomaly"]["score"] = "auto"
    raw["model"]["likelihood"] = "auto"
    params = parse_params(raw)
    for seed, (name, photo) in enumerate(photographs().items()):
        result = run_folder(name, photo, params, seed)
        with open(args.out, "a") as out:
            out.write(json.dumps(result) + "\n")
        split, cross = result["split"], result["cross_fit"]
        print(
            f"{name}: split {split['realised_fpr']:.3f}, cross_fit {cross['realised_fpr']:.3f} "
            f"{cross['expected_fpr_90']} ({result['seconds']:.0f} s)"
        )


if __name__ == "__main__":
    main()
