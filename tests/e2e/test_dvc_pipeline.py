"""`dvc repro`, `dvc exp run`, metrics and plots on a copy of the repository and a small slice."""

import json
from pathlib import Path

import pytest

from tests.e2e.project import BIN, make_project, mlflow_runs, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))


def test_repro_runs_every_stage_then_only_relists_the_source(project):
    first = run([str(BIN / "dvc"), "repro"], project)
    for stage in ("prepare", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    # Quiet output: no library warnings or MLflow chatter; evaluate names each step's seconds.
    output = first.stdout + first.stderr
    for noise in ("Warning", "WARNING", "INFO mlflow", "Created version", "Registered model"):
        assert noise not in output, output
    assert "evaluate: ONNX export in " in output
    train = json.loads((project / "metrics/train.json").read_text())
    assert train["epochs_run"] == 2 and train["parameters"] > 1_000_000
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert evaluation["test_images"] == 200
    assert 0 < evaluation["test_iwae_nll"] <= evaluation["test_neg_elbo"] + 1
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 200
    for png in ("samples.png", "reconstructions.png", "latent.png"):
        assert (project / "plots/evaluate" / png).stat().st_size > 0

    runs = mlflow_runs(project)
    assert len(runs) == 1, "train and evaluate log into one run"
    run_data = runs[0].data
    assert run_data.params["train.epochs"] == "2" and "test_neg_elbo" in run_data.metrics
    assert run_data.metrics["best_val_loss"] == train["best_val_loss"]
    assert train["mlflow_run_id"] == evaluation["mlflow_run_id"] == runs[0].info.run_id
    assert run_data.tags["data.source"] == "mnist-5k" and "version.torch" in run_data.tags
    assert not (project / "checkpoints/train.pt").exists()  # finished: nothing to resume

    second = run([str(BIN / "dvc"), "repro"], project)
    # Only the source listing runs (always); its list is unchanged, so nothing after it does.
    ran = [line for line in second.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'source':"], second.stdout
    assert "Stage 'prepare' didn't change, skipping" in second.stdout
    assert len(mlflow_runs(project)) == 1, "a skipped stage logs nothing"


def test_the_registered_model_scores_images_at_its_validation_threshold(project, tmp_path):
    """evaluate stores the model's conformal threshold (file and version tag); `convvae score`
    with models:/ flags exactly the calibration images above the cut, and about the target rate
    of the other validation images (normal by definition, never used to calibrate)."""
    import csv
    import math

    import numpy as np

    threshold = json.loads((project / "models/threshold.json").read_text())
    assert threshold["score"] == "fused" and threshold["normal_class"] is None
    val = np.load(project / "data/prepared/splits.npz")["val_images"]
    flagged = {}
    for half, images in (("selection", val[0::2]), ("calibration", val[1::2])):
        np.save(tmp_path / f"{half}.npy", images)
        out = tmp_path / f"{half}.csv"
        ref = "models:/convvae-mnist-5k/1"
        result = run(
            [str(BIN / "convvae"), "score", "--model", ref, str(tmp_path / f"{half}.npy")]
            + ["--out", str(out)],
            project,
        )
        assert "normal: every class" in result.stdout
        rows = out.read_text().splitlines()
        assert rows[0] == "file,score,normalized_score,is_anomaly,p_value"
        flagged[half] = [row["is_anomaly"] == "1" for row in csv.DictReader(rows)]
    n = len(flagged["calibration"])
    assert n == len(threshold["calibration_scores"]) > 20
    rank = math.ceil((n + 1) * (1 - threshold["target_fpr"]))
    assert sum(flagged["calibration"]) == n - rank  # the cut is the rank-th smallest score
    share = np.mean(flagged["selection"])
    assert share <= threshold["target_fpr"] + 3 * math.sqrt(0.05 * 0.95 / n)
    import mlflow

    tags = (
        mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
        .get_model_version("convvae-mnist-5k", "1")
        .tags
    )
    assert tags["anomaly.score"] == "fused" and tags["anomaly.target_fpr"] == "0.05"
    assert float(tags["anomaly.threshold_value"]) == threshold["threshold"]


def test_metrics_and_plots_show(project, tmp_path):
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], project).stdout)
    metrics = shown[""]["data"]
    assert "test_neg_elbo" in metrics["metrics/evaluate.json"]["data"]
    assert "best_val_loss" in metrics["metrics/train.json"]["data"]
    run([str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "plots")], project)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "val_loss" in html and "samples.png" in html


def test_exp_run_with_a_changed_param(project):
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline"], project)
    exp = run([str(BIN / "dvc"), "exp", "run", "-S", "train.epochs=3"], project)
    assert "Running stage 'train'" in exp.stdout
    assert "Running stage 'prepare'" not in exp.stdout  # data params did not change
    table = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], project).stdout)
    epochs_run = [
        exp_run["data"]["metrics"]["metrics/train.json"]["data"]["epochs_run"]
        for commit in table
        for exp_run in [commit, *[e for ex in commit.get("experiments") or [] for e in ex["revs"]]]
        if exp_run.get("data", {}).get("metrics")
    ]
    assert 3 in epochs_run and 2 in epochs_run
    runs = mlflow_runs(project)
    assert len(runs) == 2
    exp_runs = [r for r in runs if "dvc.exp_name" in r.data.tags]
    assert len(exp_runs) == 1 and exp_runs[0].data.params["train.epochs"] == "3"
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert exp_runs[0].data.tags["dvc.baseline_rev"] == head
    assert exp_runs[0].data.tags["git.commit"] == head


def test_temp_exp_run_logs_to_the_main_store(project):
    # --temp runs in .dvc/tmp/exps/<copy>; a store relative to it would vanish with the copy.
    before = len(mlflow_runs(project))
    run([str(BIN / "dvc"), "exp", "run", "--temp", "-S", "train.epochs=1"], project)
    runs = mlflow_runs(project)
    assert len(runs) == before + 1
    assert runs[0].data.params["train.epochs"] == "1"
