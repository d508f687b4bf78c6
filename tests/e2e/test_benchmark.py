"""`dvc repro benchmark_report` on a copy of the repository: two classes, a tiny slice."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from convvae.anomaly.scores import SCORES
from tests.e2e.project import BIN, make_project, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("benchmark"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["benchmark"]["train"]["device"] = "cpu"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_repro_runs_one_stage_per_class_then_the_report(project):
    first = run([str(BIN / "dvc"), "repro", "benchmark_report"], project)
    for stage in ("prepare", "benchmark@0", "benchmark@1", "benchmark_report"):
        assert f"Running stage '{stage}'" in first.stdout
    assert "Running stage 'train'" not in first.stdout  # the benchmark trains its own models
    assert "benchmark@2" not in first.stdout  # the matrix follows benchmark.classes

    for normal_class in (0, 1):
        metrics = json.loads((project / f"metrics/benchmark/class_{normal_class}.json").read_text())
        assert metrics["normal_class"] == normal_class and metrics["test_images"] == 200
        for score in SCORES:
            values = metrics["scores"][score]
            assert values["roc_auc_ci_low"] <= values["roc_auc"] <= values["roc_auc_ci_high"]
        threshold = json.loads(
            (project / f"models/anomaly/class_{normal_class}/threshold.json").read_text()
        )
        assert threshold["score"] == "fused" and threshold["normal_class"] == normal_class
        roc = json.loads((project / f"plots/benchmark/roc_class_{normal_class}.json").read_text())
        assert roc[0] == {"fpr": 0.0, "tpr": 0.0}
        # The peers ran on the same test images, timed.
        assert set(metrics["peers"]) == {"pyod_knn", "pyod_iforest"}
        assert all(0 < m["roc_auc"] <= 1 and m["seconds"] > 0 for m in metrics["peers"].values())

    summary = json.loads((project / "metrics/benchmark_summary.json").read_text())
    assert summary["classes"] == 2 and 0 <= summary["iwae_nll.roc_auc_mean"] <= 1
    assert summary["default_score"] == "fused"
    for method in ("fused", "excess_nll", "pyod_knn", "pyod_iforest"):
        assert 0 <= summary[f"{method}.roc_auc_mean"] <= 1, method
        assert summary[f"{method}.seconds_per_class"] > 0, method
    report = (project / "reports/anomaly.md").read_text()
    assert "| IWAE NLL |" in report and "| PyOD KNN" in report and "Different protocol" in report
    assert "Capped data" in report and "quoted: AGAD, Table 1" in report
    for figure in ("anomaly_roc.png", "anomaly_methods.png"):
        assert (project / "reports" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    assert client.get_experiment_by_name("convvae") is None  # not among the training runs
    experiment = client.get_experiment_by_name("convvae-anomaly")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "benchmark.key" in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and sorted(r.data.tags["normal_class"] for r in children) == ["0", "1"]
    assert "iwae_nll.roc_auc_mean" in parents[0].data.metrics

    second = run([str(BIN / "dvc"), "repro", "benchmark_report"], project)
    ran = [line for line in second.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'source':"], second.stdout  # the listing alone, unchanged


def class_runs(project: Path) -> dict[str, tuple[str, int]]:
    """{normal class: (run id, end time)} of every nested run of the benchmark experiment."""
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("convvae-anomaly")
    runs = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''")
    by_class = {r.data.tags["normal_class"]: (r.info.run_id, r.info.end_time) for r in runs}
    assert len(by_class) == len(runs), "one nested run per class"
    return by_class


def test_one_class_reruns_alone(project):
    before = class_runs(project)
    again = run([str(BIN / "dvc"), "repro", "-f", "-s", "benchmark@1"], project)
    assert "Running stage 'benchmark@1'" in again.stdout
    assert "benchmark@0" not in again.stdout
    status = run([str(BIN / "dvc"), "status", "benchmark_report"], project).stdout
    assert "benchmark_report" in status  # the report is stale until it is reproduced

    report = run([str(BIN / "dvc"), "repro", "benchmark_report"], project)
    # Class 1's results changed: its run is continued; class 0's run is left alone.
    assert f"class 1: continued MLflow run {before['1'][0]}" in report.stdout
    assert "class 0:" not in report.stdout
    after = class_runs(project)
    assert after["0"] == before["0"]  # untouched: same run, same end time
    assert after["1"][0] == before["1"][0] and after["1"][1] > before["1"][1]


def test_registered_class_models_score_new_images_from_the_registry(project, tmp_path):
    """register_models reruns only the report (no retraining); a registered class model scores
    through models:/ exactly as its local file does, with the same stored threshold."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["benchmark"]["register_models"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    registered = run([str(BIN / "dvc"), "repro", "benchmark_report"], project)
    assert "Running stage 'benchmark@" not in registered.stdout
    assert "registered convvae-anomaly-mnist-5k-class-0 version 1" in registered.stdout

    test_images = np.load(project / "data/prepared/splits.npz")["test_images"][:20]
    np.save(tmp_path / "new.npy", test_images)
    scored = {}
    for ref in ("models:/convvae-anomaly-mnist-5k-class-0/1", "models/anomaly/class_0/model.pt"):
        out = tmp_path / f"{len(scored)}.csv"
        result = run(
            [
                str(BIN / "convvae"),
                "score",
                "--model",
                ref,
                str(tmp_path / "new.npy"),
                "--out",
                str(out),
            ],
            project,
        )
        assert "20 images scored (fused" in result.stdout and "normal: class 0" in result.stdout
        scored[ref] = out.read_text()
    first, second = scored.values()
    assert first == second and first.count("\n") == 21
