"""Tracking faults lose no finished work: a dead server fails fast; a failed log resumes."""

import time

import mlflow
import pytest

from convvae.errors import TrackingError
from convvae.tracking.tracker import Tracker
from tests.e2e.project import BIN, make_project, mlflow_runs, run
from tests.e2e.servers import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("faults"))
    run([str(BIN / "dvc"), "repro", "prepare"], project)
    return project


def test_unreachable_server_fails_fast_before_training(prepared):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run(
        [str(BIN / "python"), "-m", "pipeline.train"],
        prepared,
        extra_env={"MLFLOW_TRACKING_URI": uri},
        check=False,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and uri in lines[0]
    assert not (prepared / "models/model.pt").exists()  # nothing was trained in vain


def test_failed_logging_keeps_the_checkpoint_and_a_rerun_logs_it(prepared, monkeypatch, capsys):
    from pipeline import train as train_stage

    monkeypatch.chdir(prepared)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def server_died(self, history):
        raise TrackingError("the tracking server went away")

    with monkeypatch.context() as patch:
        patch.setattr(Tracker, "log_history", server_died)
        with pytest.raises(TrackingError):
            train_stage.main()
    assert (prepared / "checkpoints/train.pt").exists()  # the finished training is kept
    capsys.readouterr()

    train_stage.main()
    out = capsys.readouterr().out
    assert "continuing MLflow run" in out
    assert "epoch 1/" not in out, "the re-run resumed the finished training, not trained again"
    runs = mlflow_runs(prepared)
    assert len(runs) == 1, "the re-run continued the run of the failed attempt"
    assert (
        len(
            mlflow.MlflowClient(f"sqlite:///{prepared}/mlflow.db").get_metric_history(
                runs[0].info.run_id, "val_loss"
            )
        )
        == 2
    )
    assert not (prepared / "checkpoints/train.pt").exists()
    mlflow.set_tracking_uri(None)
