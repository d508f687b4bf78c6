"""A copy of the repository's pipeline in a temporary git repository, and commands run in it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(
    cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the project with the venv's tools first on PATH (no inherited MLflow URI)."""
    result = subprocess.run(
        cmd, cwd=cwd, env=project_env(cwd, extra_env), capture_output=True, text=True, timeout=600
    )
    assert not check or result.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result


def project_env(cwd: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command run in the project at ``cwd``: the venv's tools first on
    PATH, the copy's library, no inherited MLflow URI, DVC's analytics off."""
    return {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # stage commands call `python`
        "PYTHONPATH": str(cwd / "src"),  # the copy's library, not the editable install's
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        **(extra_env or {}),
    }


def make_project(root: Path) -> Path:
    """The pipeline's files in a fresh git repository under ``root``, with quick-run params."""
    for name in ("src", "pipeline"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml", ".gitignore", ".dvcignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["max_train_images"] = 200
    params["train"]["epochs"] = 2
    params["evaluate"].update(iwae_samples=4, grid_images=16)
    params["anomaly"]["samples"] = 4
    params["benchmark"].update(
        classes=[0, 1],
        train={"epochs": 2},
        bootstrap_resamples=100,
        # PyOD's deep peers need 32+ training images per class; tests/test_peers.py runs them.
        peers=["pyod_knn", "pyod_iforest"],
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], root)
    return root


def mlflow_runs(project: Path) -> list:
    """All runs of the project's embedded MLflow store, newest first."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("convvae")
    return client.search_runs([experiment.experiment_id])
