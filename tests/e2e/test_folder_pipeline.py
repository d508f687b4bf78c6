"""`dvc repro` on a user's folder (MVTec AD layout, RGB tiles cut from a real photo, defects
drawn by the test): prepare → train → evaluate with image and pixel metrics, the class benchmark
skipped in one line, MLflow's dataset input the folder's digest, then `convvae score --resize`."""

import json
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.e2e.project import BIN, make_project, mlflow_runs, run
from tests.mvtec import DEFECTS, build_mvtec_folder

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("folder_project"))
    images = build_mvtec_folder(tmp_path_factory.mktemp("data") / "tiles", rgb=True, size=48,
                                n_train=80, fmt="jpg")  # fmt: skip
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(
        source="folder", path=str(images), max_train_images=None, image_size=40, crop=32
    )
    params["train"]["epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_repro_measures_the_folders_defects_and_skips_the_class_benchmark(project):
    done = run([str(BIN / "dvc"), "repro"], project)
    for stage in ("prepare", "train", "evaluate", "benchmark@0", "benchmark_report"):
        assert f"Running stage '{stage}'" in done.stdout
    assert "skipped, data.source is folder" in done.stdout

    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert manifest["image_shape"] == [3, 32, 32] and manifest["class_names"][0] == "good"
    assert manifest["preprocessing"]["image_size"] == [40, 40]
    assert manifest["preprocessing"]["crop"] == [32, 32]
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["val"]["count"] == 80
    train = json.loads((project / "metrics/train.json").read_text())
    assert train["epochs_run"] == 3

    defects = json.loads((project / "metrics/defects.json").read_text())
    keys = ["image_roc_auc", "pixel_roc_auc", "pixel_aupro", "pyod_knn.image_roc_auc",
            "pyod_iforest.image_roc_auc", *(f"image_roc_auc.{d}" for d in DEFECTS)]  # fmt: skip
    for key in keys:
        assert 0 <= defects[key] <= 1, key
    assert defects["test_defective_images"] == 2 * 10 and defects["score"] == "patch_and_fused"
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert evaluation["test_images"] == 20  # likelihoods on the good test images only
    assert evaluation["likelihood"].startswith("bernoulli")  # auto: a folder's default too
    # The label-free check: anomalies made from the folder's own validation images.
    synthetic = evaluation["synthetic_anomaly_roc_auc"]
    assert set(synthetic) == {"all", "ci_low", "ci_high", "cutpaste", "meanfill", "blend"}
    assert 0 <= synthetic["ci_low"] <= synthetic["all"] <= synthetic["ci_high"] <= 1
    card = (project / "models/model_card.md").read_text()
    assert f"ROC-AUC {synthetic['all']:.3f}, 95% interval" in card
    with Image.open(project / "plots/evaluate/anomaly_maps.png") as figure:
        assert figure.mode == "RGB"

    class_metrics = json.loads((project / "metrics/benchmark/class_0.json").read_text())
    assert "skipped" in class_metrics
    assert "Not run" in (project / "reports/anomaly.md").read_text()

    (mlflow_run,) = mlflow_runs(project)
    assert mlflow_run.data.tags["data.file.folder"] == manifest["folder_sha256"]
    assert mlflow_run.data.metrics["defects.image_roc_auc"] == defects["image_roc_auc"]
    assert mlflow_run.data.metrics["synthetic_anomaly_roc_auc.all"] == synthetic["all"]
    inputs = mlflow_run.inputs.dataset_inputs
    assert {i.dataset.source for i in inputs} and all(
        manifest["folder_sha256"] in json.dumps([t.value for t in i.tags]) for i in inputs
    )

    # An image changed in place under data.path (which DVC does not watch) makes prepare
    # stale; put back as it was, prepare is up to date again.
    image = Path(yaml.safe_load((project / "params.yaml").read_text())["data"]["path"])
    image = sorted((image / "train" / "good").iterdir())[0]
    original, times = image.read_bytes(), image.stat()
    Image.open(image).transpose(Image.FLIP_LEFT_RIGHT).save(image, format="JPEG")
    run([str(BIN / "dvc"), "repro", "source"], project)
    status = run([str(BIN / "dvc"), "status", "prepare"], project).stdout
    assert "prepare:" in status and "data/source.json" in status, status
    image.write_bytes(original)
    os.utime(image, ns=(times.st_atime_ns, times.st_mtime_ns))
    run([str(BIN / "dvc"), "repro", "source"], project)
    status = run([str(BIN / "dvc"), "status", "prepare"], project).stdout
    assert "data/source.json" not in status, status


def test_score_resizes_new_photos_as_prepare_did(project, tmp_path):
    source = Path(yaml.safe_load((project / "params.yaml").read_text())["data"]["path"])
    photos = sorted((source / "test" / "good").iterdir())[:2]
    result = run([str(BIN / "convvae"), "score", "--model", "models/model.pt",
                  *[str(p) for p in photos[:1]], "--resize"], project)  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "file,score,normalized_score,is_anomaly,p_value" and len(lines) == 2
    refused = run([str(BIN / "convvae"), "score", "--model", "models/model.pt", str(photos[0])],
                  project, check=False)  # fmt: skip
    assert refused.returncode == 2 and "--resize" in refused.stderr
