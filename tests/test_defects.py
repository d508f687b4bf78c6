"""A folder source from data to decisions, in process: splits with masks, a small RGB model,
image and pixel metrics against the folder's defects, and `convvae score --resize --maps`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convvae.anomaly.fit import fit_reference
from convvae.anomaly.reference import save_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import anomaly_maps
from convvae.anomaly.thresholds import calibrate
from convvae.benchmark.ablations import VAE_FREE, defect_ablations
from convvae.benchmark.defects import defect_metrics, measure_defects
from convvae.config import DEFAULT_SCORE, parse_params
from convvae.data.sources import load_source
from convvae.data.splits import (
    build_manifest,
    load_splits,
    make_splits,
    save_splits,
    selection_and_calibration,
)
from convvae.model.architecture import resolve_architecture
from convvae.model.vae import ConvVAE
from convvae.training.trainer import Trainer
from tests.conftest import quick_train_config
from tests.mvtec import DEFECTS, build_mvtec_folder
from tests.test_cli import assert_one_line_error, convvae

SPEC = ScoreSpec(DEFAULT_SCORE["folder"], 4, 0)  # a folder's default score
NAMES = ["good", *sorted(DEFECTS)]  # label order: good, then the defect folders sorted


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_mvtec_folder(
        tmp_path_factory.mktemp("mvtec") / "tiles", rgb=True, size=32, n_train=120
    )


@pytest.fixture(scope="module")
def splits(folder):
    return make_splits(load_source("folder", folder, image_size=None, crop=None, channels="auto"),
                       0.2, 0.2, seed=0)  # fmt: skip


@pytest.fixture(scope="module")
def scorer(splits) -> Scorer:
    params = parse_params({"data": {"source": "folder", "path": "unused"}})
    torch.manual_seed(0)
    model = ConvVAE(resolve_architecture(params.model, splits.train.images.shape[1:]))
    trainer = Trainer(model, quick_train_config(epochs=15, lr=2e-3), progress=False)
    model = trainer.fit(
        torch.from_numpy(splits.train.images), torch.from_numpy(splits.val.images)
    ).model
    selection, _ = selection_and_calibration(splits.val.images)
    reference = fit_reference(model, splits.train.images, selection, SPEC.samples, 0)
    return Scorer(model, reference, SPEC)


def test_splits_keep_the_defect_masks_through_the_split_file(splits, tmp_path):
    assert splits.test.masks is not None and splits.train.masks is None
    defective = splits.test.labels > 0
    assert splits.test.masks[defective].reshape(defective.sum(), -1).any(1).all()
    assert not splits.test.masks[~defective].any()
    assert (splits.val.labels == 0).all()  # validation comes out of train/good only
    save_splits(splits, tmp_path / "splits.npz")
    again = load_splits(tmp_path / "splits.npz")
    np.testing.assert_array_equal(again.test.masks, splits.test.masks)
    np.testing.assert_array_equal(again.test.mask_known, splits.test.mask_known)


def test_manifest_names_files_relative_to_the_folder_with_one_digest(folder, splits):
    source = load_source("folder", folder, image_size=None, crop=None, channels="auto")
    manifest = build_manifest(source, splits)
    assert "train/good/000.png" in manifest["files"]
    assert manifest["class_names"] == NAMES
    assert manifest["preprocessing"]["channels"] == 3 and len(manifest["folder_sha256"]) == 64
    assert manifest["test_images_with_masks"] == int((splits.test.labels > 0).sum())
    (folder / "train/good/000.png").write_bytes((folder / "train/good/001.png").read_bytes())
    changed = build_manifest(
        load_source("folder", folder, image_size=None, crop=None, channels="auto"), splits
    )
    assert changed["folder_sha256"] != manifest["folder_sha256"]


def test_defect_metrics_beat_chance_and_maps_point_at_the_defects(scorer, splits):
    metrics = defect_metrics(scorer, splits.train.images, splits.test, NAMES)
    assert metrics["test_defective_images"] == int((splits.test.labels > 0).sum())
    for key in ("image_roc_auc", *(f"image_roc_auc.{d}" for d in DEFECTS)):
        assert 0 <= metrics[key] <= 1, key
    # The most unusual patch finds pasted photo patches and scratches in a texture, where a
    # whole-image distance (PyOD's KNN on pixels) barely beats chance.
    assert metrics["image_roc_auc"] == metrics[f"{SPEC.name}.image_roc_auc"] > 0.75
    assert metrics["patch_knn.image_roc_auc"] > 0.75
    assert metrics["image_roc_auc"] > metrics["pyod_knn.image_roc_auc"]
    for peer in ("pyod_knn", "pyod_iforest", "gaussian_zscore"):
        assert 0 <= metrics[f"{peer}.image_roc_auc"] <= 1, peer
    assert 0 < metrics["pixel_anomalous_fraction"] < 0.2
    assert metrics["pixel_aupro"] > 0.5 > metrics["pixel_aupro_chance"]
    assert metrics["pixel_roc_auc"] > metrics["gaussian_zscore.pixel_roc_auc"]
    assert metrics["pixel_roc_auc"] > metrics["deviance_map.pixel_roc_auc"]


def test_the_ablations_are_measured_beside_the_default_with_the_margin_over_the_best(
    scorer, splits
):
    """The untrained network and the raw-pixel patch search get image and pixel metrics; the
    margin is over the best method that needs no trained VAE, with its paired interval."""
    params = parse_params({"data": {"source": "folder", "path": "unused"}})
    ablations = defect_ablations(params, splits.train.images, splits.val.images)
    metrics = defect_metrics(scorer, splits.train.images, splits.test, NAMES, ablations)
    for name in ("untrained_encoder", "pixel_patch_knn"):
        assert 0 <= metrics[f"{name}.image_roc_auc"] <= 1, name
        assert 0 <= metrics[f"{name}.pixel_roc_auc"] <= 1, name
    # The raw patch search finds pasted patches too: the ablation is a real competitor here.
    assert metrics["pixel_patch_knn.image_roc_auc"] > 0.6
    vae_free = {
        key.removesuffix(".image_roc_auc"): value
        for key, value in metrics.items()
        if key.endswith(".image_roc_auc") and key.removesuffix(".image_roc_auc") in VAE_FREE
    }
    assert {"untrained_encoder", "pixel_patch_knn", "pyod_knn", "gaussian_zscore"} <= set(vae_free)
    best = metrics["vae_free_best"]
    assert vae_free[best] == max(vae_free.values())
    margin = metrics["margin_over_vae_free.image_roc_auc"]
    assert margin == pytest.approx(metrics["image_roc_auc"] - vae_free[best], abs=1e-12)
    assert (
        metrics["margin_over_vae_free.ci_low"] <= margin <= metrics["margin_over_vae_free.ci_high"]
    )


def test_anomaly_maps_are_per_pixel_and_do_not_depend_on_the_batch(scorer, splits):
    images = splits.test.images[:10]
    maps = anomaly_maps(scorer, images)
    assert maps.shape == (10, 32, 32) and maps.dtype == np.float32 and (maps >= 0).all()
    np.testing.assert_allclose(anomaly_maps(scorer, images[3:4])[0], maps[3], rtol=1e-5, atol=1e-6)
    floats = images.astype(np.float32) / 255
    np.testing.assert_allclose(anomaly_maps(scorer, floats), maps, rtol=1e-6)


def test_the_patch_map_is_the_nearest_reference_patch_upsampled_and_smoothed(scorer, splits):
    """The default map written out with other tools than the scorer's: each patch feature's
    distance to its nearest row of the model's patch bank (torch.cdist), every row one of the
    reference images' patches, upsampled by F.interpolate and smoothed by scipy's
    gaussian_filter."""
    from scipy import ndimage

    from convvae.anomaly.scorer import map_sigma

    images = splits.test.images[:3]
    to_float = lambda a: torch.from_numpy(a).float() / 255  # noqa: E731
    with torch.no_grad():
        features = scorer.model.encoder[:2](to_float(images)).double()  # Conv2d, ReLU
        patches = scorer.model.encoder[:2](to_float(scorer.reference.images)).double()
    n, channels, height, width = features.shape
    patch_rows = patches.permute(0, 2, 3, 1).reshape(-1, channels)
    bank_rows = torch.from_numpy(scorer.reference.patch_bank).double()
    assert float(torch.cdist(bank_rows, patch_rows).amin(1).max()) < 1e-5
    nearest = torch.cdist(features.permute(0, 2, 3, 1).reshape(-1, channels), bank_rows)
    grid = nearest.min(1).values.reshape(n, 1, height, width)
    upsampled = torch.nn.functional.interpolate(grid, size=(32, 32), mode="bilinear")[:, 0]
    expected = np.stack(
        [ndimage.gaussian_filter(m, map_sigma((32, 32))) for m in upsampled.numpy()]
    )
    np.testing.assert_allclose(anomaly_maps(scorer, images), expected, rtol=1e-4, atol=1e-5)


def test_smoothing_is_scipys_gaussian_filter(scorer, splits):
    """The maps are blurred by matrices built from scipy's filter of the identity: the same as
    filtering each map with scipy.ndimage.gaussian_filter (mode reflect, truncate 4)."""
    from scipy import ndimage

    from convvae.anomaly.scorer import map_sigma

    x = torch.from_numpy(splits.test.images[:4]).float() / 255
    with torch.no_grad():
        raw = scorer.feature_knn_map(x).numpy()
        smoothed = scorer.anomaly_map(x).numpy()
    sigma = map_sigma((32, 32))
    expected = np.stack([ndimage.gaussian_filter(m.astype(np.float64), sigma) for m in raw])
    np.testing.assert_allclose(smoothed, expected, rtol=1e-5, atol=1e-6 * expected.max())


def test_a_class_source_writes_a_note_not_defect_metrics(trained, mnist_slice, tmp_path):
    plain = Scorer(trained, None, ScoreSpec("excess_nll"))
    result = measure_defects(plain, mnist_slice, list("0123456789"), tmp_path / "m.png")
    assert "note" in result and "image_roc_auc" not in result
    assert not (tmp_path / "m.png").exists()


def test_measure_defects_draws_the_maps_figure(scorer, splits, tmp_path):
    figure = tmp_path / "maps.png"
    result = measure_defects(scorer, splits, NAMES, figure)
    assert "image_roc_auc" in result
    with Image.open(figure) as image:
        assert image.mode == "RGB" and image.size[1] > 4 * 32  # images, overlays, maps, masks


@pytest.fixture(scope="module")
def model_file(scorer, splits, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("folder_model")
    scorer.model.preprocessing = {"image_size": [32, 32], "crop": None, "channels": 3}
    save_fitted_model(scorer.model, scorer.reference, folder / "model.pt")
    _, calibration = selection_and_calibration(splits.val.images)
    record = calibrate(scorer, calibration, 0.05)
    (folder / "threshold.json").write_text(json.dumps(record.as_json()))
    return folder / "model.pt"


def test_score_resizes_only_when_asked_and_writes_maps(model_file, scorer, folder, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    names = sorted(p.name for p in (folder / "test/patch").iterdir())[:3]
    for name in names:  # the same tiles at twice the size, as JPEG
        with Image.open(folder / "test/patch" / name) as image:
            image.resize((64, 64), Image.BILINEAR).save(big / f"{Path(name).stem}.jpg")
    refused = convvae("score", "--model", str(model_file), str(big))
    line = assert_one_line_error(refused)
    assert "64x64 pixels, the model expects 32x32" in line and "--resize" in line
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    done = convvae("score", "--model", str(model_file), str(big), "--resize", "--out", str(out),
                   "--maps", str(maps))  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert [row["file"] for row in rows] == [f"{Path(n).stem}.jpg" for n in names]
    for name in names:
        stem = Path(name).stem
        heat = np.load(maps / f"{stem}_map.npy")
        assert heat.shape == (32, 32) and heat.dtype == np.float32
        with Image.open(maps / f"{stem}_map.png") as overlay:
            assert overlay.size == (32, 32) and overlay.mode == "RGB"
    # The written map is the model's smoothed map of the resized image.
    with Image.open(big / f"{Path(names[0]).stem}.jpg") as image:
        resized = np.asarray(image.convert("RGB").resize((32, 32), Image.BILINEAR))
    expected = anomaly_maps(scorer, resized.transpose(2, 0, 1)[None].copy())[0]
    np.testing.assert_allclose(np.load(maps / f"{Path(names[0]).stem}_map.npy"), expected,
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    # Maps already there are not replaced silently (the CSV goes elsewhere this time).
    again = convvae("score", "--model", str(model_file), str(big), "--resize", "--maps", str(maps))
    line = assert_one_line_error(again)
    assert f"_map.png (and {2 * len(names) - 1} more) exists; pass --overwrite" in line


def test_the_guarded_patch_score_adds_only_the_contrast_distances_far_tail(scorer, splits):
    """patch_knn_guarded: patch_knn in held-out standard deviations, plus the standardised
    contrast distance beyond 4; flat frames, whose patches a texture can resemble, rank above
    every normal tile, while normal tiles keep their patch ranking."""
    from sklearn.metrics import roc_auc_score

    from convvae.anomaly.scoring import every_score

    reference = scorer.reference
    assert {"patch_knn", "contrast_knn"} <= set(reference.scale)  # fitted by fit_reference
    good = splits.test.images[splits.test.labels == 0]
    flat = np.broadcast_to(
        np.arange(0, 256, 32, dtype=np.uint8)[:, None, None, None], (8, *good.shape[1:])
    ).copy()
    names = ("patch_knn", "contrast_knn", "patch_knn_guarded")
    for images in (good, flat):
        found = every_score(scorer, images, names)
        z = {n: (found[n] - reference.center[n]) / reference.scale[n] for n in names[:2]}
        expected = z["patch_knn"] + np.clip(z["contrast_knn"] - 4, 0, None)
        np.testing.assert_allclose(found["patch_knn_guarded"], expected, rtol=1e-9, atol=1e-12)
    normal = every_score(scorer, good, names)["patch_knn_guarded"]
    odd = every_score(scorer, flat, names)["patch_knn_guarded"]
    labels = np.r_[np.zeros(len(normal)), np.ones(len(odd))]
    assert roc_auc_score(labels, np.r_[normal, odd]) == 1.0


def test_patch_and_fused_is_the_mean_of_its_halves_in_held_out_standard_deviations(scorer, splits):
    """patch_and_fused: patch_knn_guarded and fused, each standardised by its own mean and
    spread on the held-out normal images that fit the reference (so both halves weigh the
    same); a flat frame (whole-image evidence) and a scratched tile (a local defect) both rank
    above the normal tiles on average."""
    from convvae.anomaly.scoring import every_score

    reference = scorer.reference
    halves = ("patch_knn_guarded", "fused")
    assert set(halves) <= set(reference.scale)  # fitted by fit_reference, second
    selection, _ = selection_and_calibration(splits.val.images)
    found = every_score(scorer, selection, (*halves, "patch_and_fused"))
    for half in halves:  # the statistics are those of the held-out images themselves
        assert found[half].mean() == pytest.approx(reference.center[half], rel=1e-9, abs=1e-9)
        assert found[half].std() == pytest.approx(reference.scale[half], rel=1e-6)
    z = [(found[h] - reference.center[h]) / reference.scale[h] for h in halves]
    np.testing.assert_allclose(found["patch_and_fused"], np.mean(z, 0), rtol=1e-9, atol=1e-12)
    assert abs(found["patch_and_fused"].mean()) < 1e-6
    good = splits.test.images[splits.test.labels == 0]
    flat = np.full((4, *good.shape[1:]), 128, dtype=np.uint8)
    scratched = splits.test.images[splits.test.labels == 1 + sorted(DEFECTS).index("scratch")]
    normal = every_score(scorer, good, ("patch_and_fused",))["patch_and_fused"]
    for odd in (flat, scratched):
        assert every_score(scorer, odd, ("patch_and_fused",))["patch_and_fused"].mean() > np.median(
            normal
        )
