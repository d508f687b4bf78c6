"""MLflow tracking: store location, provenance, unreachable servers, logged and served models."""

import os
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from convvae.config import TrackingConfig
from convvae.errors import TrackingError
from convvae.model.files import save_model
from convvae.runtime.uris import hide_secrets, uri_secrets, without_secrets
from convvae.tracking.probes import check_database, check_server
from convvae.tracking.provenance import provenance_tags, repository_root
from convvae.tracking.quiet import quiet_model_logging
from convvae.tracking.store import client_uri, resolve_tracking_uri
from convvae.tracking.tracker import Tracker, flatten
from tests.conftest import tiny_model
from tests.e2e.servers import free_port


def test_store_is_anchored_to_the_main_repository_from_a_dvc_temp_copy(tmp_path):
    temp_copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12"
    temp_copy.mkdir(parents=True)
    assert repository_root(temp_copy) == (tmp_path / "repo").resolve()
    assert repository_root(tmp_path) == tmp_path.resolve()


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == "http://127.0.0.1:5000"
    explicit = TrackingConfig(uri="sqlite:////srv/team.db")
    assert resolve_tracking_uri(explicit, tmp_path) == "sqlite:////srv/team.db"
    # Relative: the repository's, as the default is (a dvc exp --temp copy is deleted).
    relative = TrackingConfig(uri="sqlite:///stores/mlflow.db")
    assert resolve_tracking_uri(relative, tmp_path) == f"sqlite:///{tmp_path}/stores/mlflow.db"
    for kept in ("sqlite:///:memory:", "sqlite:///file:m.db?mode=ro&uri=true"):
        assert resolve_tracking_uri(TrackingConfig(uri=kept), tmp_path) == kept


def test_flatten_nested_params():
    flat = flatten({"train": {"lr": 0.1, "epochs": 3}, "model": {"channels": [8, 16]}})
    assert flat == {"train.lr": 0.1, "train.epochs": 3, "model.channels": "[8, 16]"}


def test_provenance_names_commit_and_versions(tmp_path):
    tags = provenance_tags(Path(__file__).parents[1])
    assert tags["version.torch"].startswith("2.14")
    assert tags["device"].startswith(("cpu", "NVIDIA"))
    assert tags["git.dirty"] in ("True", "False")
    assert len(tags["git.commit"]) == 40
    assert "git.commit" not in provenance_tags(tmp_path)  # not a git repository


def test_unreachable_server_is_a_quick_clear_error():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable") as err:
        Tracker(TrackingConfig(uri=uri, timeout_s=2))
    assert time.monotonic() - started < 30
    assert uri in str(err.value) and "\n" not in str(err.value)


def test_history_params_and_model_are_logged_and_served(
    local_tracker, tmp_path, val_images, trained, capfd
):
    model = trained
    model_file = tmp_path / "model.pt"
    save_model(model, model_file)
    example = val_images[:4].float().numpy() / 255
    with local_tracker.run() as run_id:
        local_tracker.log_params({"train": {"lr": 0.001}})
        local_tracker.log_history(
            [{"epoch": 1, "val_loss": 200.0}, {"epoch": 2, "val_loss": 150.0}]
        )
        version = local_tracker.log_model(
            model, model_file, example, "convvae-unit", {"test_x": "1"}
        )
    # MLflow's own messages about it stay out of the stage's output (`make run` stays quiet).
    chatter = capfd.readouterr().err
    assert "registered model" not in chatter.lower() and "Created version" not in chatter
    assert "Validating input example" not in chatter
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.data.params == {"train.lr": "0.001"}
    history = client.get_metric_history(run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 200.0), (2, 150.0)]
    assert version == "1"
    assert str(local_tracker.registry.version("models:/convvae-unit/latest").version) == "1"
    assert client.get_model_version("convvae-unit", "1").tags["test_x"] == "1"

    # dst_path: MLflow would otherwise leave the download in a fresh folder under /tmp
    (tmp_path / "dl").mkdir()
    served = mlflow.pyfunc.load_model("models:/convvae-unit/1", dst_path=str(tmp_path / "dl"))
    first = served.predict(example)
    again = served.predict(example)
    assert "reconstruction" not in first  # only when asked: a decode per image
    asked = served.predict(example, params={"return_reconstruction": True,
                                            "return_anomaly_map": True})  # fmt: skip
    assert asked["reconstruction"].shape == (4, 1, 28, 28)
    assert asked["anomaly_map"].shape == (4, 28, 28)
    assert first["score"].shape == (4,)
    np.testing.assert_array_equal(first["score"], again["score"])  # no sampling noise
    # An image of noise is less likely under the model than a real digit.
    noise = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    assert served.predict(noise)["score"][0] > first["score"].max()

    with pytest.raises(Exception, match="shape"):
        served.predict(np.zeros((2, 1, 32, 32), dtype=np.float32))

    # The artifact holds no code (whoever writes to the store could run it in every server):
    # the installed convvae serves it, and only the version that logged it.
    import yaml

    import convvae

    artifact = Path(mlflow.artifacts.download_artifacts("models:/convvae-unit/1"))
    assert not (artifact / "code").exists()
    mlmodel = yaml.safe_load((artifact / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"].get("code") is None
    assert mlmodel["metadata"]["convvae_version"] == convvae.__version__
    mlmodel["metadata"]["convvae_version"] = "0.0.1"
    (artifact / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(Exception, match=r"logged by convvae 0\.0\.1, but convvae .* installed"):
        mlflow.pyfunc.load_model(str(artifact))


def test_continuing_a_run_that_the_store_lacks(local_tracker):
    assert not local_tracker.run_exists("0" * 32)
    with local_tracker.run() as run_id:
        pass
    assert local_tracker.run_exists(run_id)


def test_pytorch_flavour_reconstructs(local_tracker, tmp_path, val_images):
    model = tiny_model()
    save_model(model, tmp_path / "m.pt")
    example = val_images[:2].float().numpy() / 255
    with local_tracker.run():
        local_tracker.log_model(model, tmp_path / "m.pt", example, None, {})
    logged = mlflow.search_logged_models(output_format="list")
    torch_model = next(m for m in logged if m.name == "convvae-pytorch")
    loaded = mlflow.pytorch.load_model(torch_model.model_uri)
    out = loaded(torch.from_numpy(example))
    assert out.shape == (2, 1, 28, 28) and out.min() >= 0 and out.max() <= 1


def test_model_logging_hides_the_registry_prints_and_passes_every_other_line(capsys):
    chatter = "Registered model 'convvae-x' already exists. Creating a new version of this model"
    with pytest.raises(RuntimeError, match="registry down"), quiet_model_logging():
        print("Created version '3' of model 'convvae-x'.", file=sys.stderr)
        print(chatter, file=sys.stderr)
        print("a real problem", file=sys.stderr)
        assert capsys.readouterr().err == "a real problem\n"  # at once, not at the end
        sys.stderr.write("no newline yet")
        raise RuntimeError("registry down")
    assert capsys.readouterr().err == "no newline yet"


def test_a_store_failing_as_the_run_ends_is_one_line(local_tracker, monkeypatch):
    # A store that dies mid-run fails at the run's end too: that failure must not escape
    # as MLflow's own traceback.
    from mlflow.exceptions import MlflowException

    def dead(*args, **kwargs):
        raise MlflowException("API request to endpoint /runs/update failed")

    monkeypatch.setattr(mlflow.ActiveRun, "__exit__", dead)  # ending the run: end_run
    try:
        with (
            pytest.raises(TrackingError, match="could not log to the run") as err,
            local_tracker.run(),
        ):
            pass
    finally:
        monkeypatch.undo()
        mlflow.end_run()
    assert "runs/update failed" in str(err.value)


def test_a_store_that_fails_to_answer_is_not_taken_for_no_alias(local_tracker, monkeypatch):
    from mlflow.exceptions import MlflowException

    with pytest.raises(TrackingError, match="no registered model"):
        local_tracker.registry.model_versions("nothing-here")
    assert (
        local_tracker.registry.version_by_alias("nothing-here", "champion") is None
    )  # no such model

    def timeout(*args, **kwargs):
        raise MlflowException("API request to /aliases failed: read timed out")

    monkeypatch.setattr(local_tracker.client, "get_model_version_by_alias", timeout)
    with pytest.raises(TrackingError, match="could not read @champion of m .*timed out"):
        local_tracker.registry.version_by_alias("m", "champion")


def test_changed_params_compares_with_what_the_run_logged(local_tracker):
    with local_tracker.run() as run_id:
        local_tracker.log_params({"anomaly": {"samples": 8}, "train": {"lr": 0.001}})
    unchanged = flatten({"anomaly": {"samples": 8}, "train": {"lr": 0.001}, "new": {"key": 1}})
    assert local_tracker.changed_params(run_id, unchanged) == []
    changed = flatten({"anomaly": {"samples": 16}, "train": {"lr": 0.001}})
    assert local_tracker.changed_params(run_id, changed) == ["anomaly.samples"]
    # A password in tracking.uri is logged as ***, and compared as logged.
    secret = {"tracking": {"uri": "http://ann:s3cret@mlflow:5000"}}
    with local_tracker.run() as run_id:
        local_tracker.log_params(secret)
    logged = mlflow.MlflowClient().get_run(run_id).data.params
    assert logged == {"tracking.uri": "http://ann:***@mlflow:5000"}
    assert local_tracker.changed_params(run_id, flatten(secret)) == []


def test_a_password_in_the_uri_is_sent_as_basic_auth_and_never_shown():
    # urllib refuses user:password@ in a URL; MLflow takes it, so the reachability check must.
    import base64
    import http.server
    import threading

    expected = "Basic " + base64.b64encode(b"ann:p@ss").decode()

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.headers.get("Authorization") == expected else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        for password, ok in (("p%40ss", True), ("wrong", False)):
            # The check alone: this server speaks no MLflow.
            uri = f"http://ann:{password}@127.0.0.1:{port}"
            if ok:
                check_server(uri, 5)
                continue
            with pytest.raises(TrackingError, match="unreachable") as err:
                check_server(uri, 5)
            assert f"http://ann:***@127.0.0.1:{port}" in str(err.value)
            assert "wrong" not in str(err.value)
    finally:
        server.shutdown()
    assert without_secrets("postgresql://u:s3cret@db/x") == "postgresql://u:***@db/x"
    # A token in place of the user, or in the query (presigned, OAuth), is hidden too.
    assert without_secrets("https://TOKEN@host/?token=t1&a=1") == "https://***@host/?token=***&a=1"
    assert without_secrets("s3://b/k?X-Amz-Signature=zz") == "s3://b/k?X-Amz-Signature=***"
    for plain in ("sqlite:////srv/m.db", "sqlite:///m.db", "file:///tmp/x", "http://h:5000/a?b=1"):
        assert without_secrets(plain) == plain
    # A database password runs to the last @ (SQLAlchemy reads it so; urlsplit sees a path).
    assert without_secrets("mysql://u:pa/ss?x@h/db") == "mysql://u:***@h/db"
    assert uri_secrets("mysql://u:pa/ss?x@h/db") == ["a password"]
    # Not secrets: a database user alone (PGPASSWORD, .pgpass), keys that only contain "key".
    for plain in ("postgresql://mlflow@db/mlflow", "postgresql://h/db?sslkey=/k&keyword=1",
                  "https://h/?monkey=1&keyboard=2"):  # fmt: skip
        assert uri_secrets(plain) == [] and without_secrets(plain) == plain
    assert uri_secrets("https://h/?api_key=1&monkey=2") == ["query parameter 'api_key'"]
    # Messages that quote the URL or its parts hide every secret, however short.
    said = "connect to db as u with pw p@x failed (postgresql://u:p%40x@db/m)"
    assert hide_secrets(said, "postgresql://u:p%40x@db/m") == (
        "connect to db as u with pw *** failed (postgresql://u:***@db/m)"
    )


def test_credentials_never_follow_a_redirect():
    # urllib would send the Authorization header on to wherever the server redirects.
    import http.server
    import threading

    seen = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    target = http.server.HTTPServer(("127.0.0.1", 0), Elsewhere)

    class Redirect(Elsewhere):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{target.server_address[1]}/health")
            self.end_headers()

    source = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    for server in (target, source):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    port = source.server_address[1]
    try:
        with pytest.raises(TrackingError, match="redirects to http://127.0.0.1:") as err:
            check_server(f"http://ann:s3cret@127.0.0.1:{port}", 5)
        assert seen == [] and "s3cret" not in str(err.value)
        check_server(f"http://127.0.0.1:{port}", 5)  # nothing to leak: followed
        assert seen == [None]
    finally:
        for server in (target, source):
            server.shutdown()


def test_an_unreachable_database_is_a_quick_clear_error(monkeypatch):
    # MLflow itself retries a database it cannot reach for about 100 s, then a traceback.
    # A password belongs in the environment, never in params.yaml (test_config).
    uri = f"postgresql://mlflow:s3cret@127.0.0.1:{free_port()}/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(TrackingError, match="tracking database .* is unreachable") as err:
        Tracker(TrackingConfig(timeout_s=2))
    assert time.monotonic() - started < 10
    assert "s3cret" not in str(err.value) and "mlflow:***@127.0.0.1" in str(err.value)


def test_an_evaluation_with_other_params_than_its_training_gets_its_own_run(
    local_tracker, tmp_path, mnist_slice, trained, capsys
):
    # evaluate re-runs alone when only anomaly.* or evaluate.* changed; logging into the
    # training run would pair the new metrics with the old params (and MLflow refuses a
    # changed param).
    import dataclasses

    from convvae.anomaly.scorer import Scorer
    from convvae.anomaly.scores import ScoreSpec
    from convvae.anomaly.thresholds import calibrate
    from convvae.config import parse_params
    from convvae.data.splits import selection_and_calibration
    from convvae.tracking.runs import TRAINING_RUN_TAG, log_evaluation

    params = parse_params({"tracking": {"register_model": False}})
    with local_tracker.run() as training_run:
        local_tracker.log_params(params.to_dict())
    model_file = tmp_path / "model.pt"
    save_model(trained, model_file)
    (tmp_path / "plots").mkdir()
    _, calibration = selection_and_calibration(mnist_slice.val.images)
    record = calibrate(Scorer(trained, None, ScoreSpec("neg_elbo", 4, 0)), calibration, 0.05)
    example = mnist_slice.test.images[:2].astype(np.float32) / 255

    def evaluate(p):
        metrics, plots = {"test_neg_elbo": 1.0}, tmp_path / "plots"
        return log_evaluation(
            local_tracker, training_run, p, metrics, plots, trained, model_file, example, record
        )

    assert evaluate(params) == training_run  # the same params: the training run
    changed = dataclasses.replace(
        params, anomaly=dataclasses.replace(params.anomaly, target_fpr=0.01)
    )
    apart = evaluate(changed)
    assert apart != training_run
    assert "params changed since training (anomaly.target_fpr)" in capsys.readouterr().out
    run = mlflow.MlflowClient().get_run(apart)
    assert run.data.params["anomaly.target_fpr"] == "0.01"
    assert run.data.tags[TRAINING_RUN_TAG] == training_run
    assert run.data.metrics["test_neg_elbo"] == 1.0
    training = mlflow.MlflowClient().get_run(training_run)
    assert training.data.params["anomaly.target_fpr"] == "0.05"


def test_an_unknown_registry_reference_names_what_exists(local_tracker):
    from convvae.tracking.modelref import load_model_ref

    with pytest.raises(TrackingError, match="no registered model named 'nothing'") as err:
        load_model_ref("models:/nothing@champion")
    assert "re-run the stage" not in str(err.value)  # not the store-failure advice


def test_mlflow_gets_the_credentials_apart_from_the_uri(monkeypatch):
    # MLflow prints its tracking URI in every "View run ... at:" line.
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert client_uri("https://ann:p%40ss@mlflow.example:5000/prefix") == (
        "https://mlflow.example:5000/prefix"
    )
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ann"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    database = "postgresql://u:pw@db/mlflow"  # SQLAlchemy needs it in the URL
    assert client_uri(database) == database


@pytest.mark.parametrize(
    "uri",
    [
        "mysql://u:pw@localhost/mlflow?unix_socket=/run/mysqld/mysqld.sock",
        "mysql://u:pw@localhost/mlflow",
        "postgresql://u:pw@localhost/db?host=/var/run/postgresql",
        "mssql+pyodbc://u:pw@mydsn",
        "postgresql://u@h1:5432,h2:5432/db",
    ],
)
def test_database_uris_that_are_not_one_tcp_address_are_left_to_mlflow(uri):
    check_database(uri, 1)  # no connection tried, no error
