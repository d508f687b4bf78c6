"""The team set-up: a real `mlflow server` on 127.0.0.1 with a PostgreSQL backend store and
MLflow's basic-auth login (deploy/mlflow-server.sh).

Runs a short pipeline through it as the training identity, which may not move an alias; promotes
as the promoting identity; reads the model back, and pushes the DVC outputs to a remote. Needs
Debian's postgresql (`make test` installs it as root); without it the test skips, except in CI
where it fails.
"""

import base64
import glob
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from convvae.tracking.registry import MODEL_DIGEST_TAG
from tests.e2e.project import BIN, REPO, make_project, run
from tests.e2e.servers import free_port, running_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def postgres_uri():
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: `make test` installs Debian's postgresql")
        pytest.skip("PostgreSQL not installed (apt-get install postgresql)")
    # Not under pytest's tmp_path: as root the cluster runs as "postgres", which cannot enter it.
    folder = tempfile.mkdtemp(prefix="convvae-pg-")
    os.chmod(folder, 0o755)
    script = str(REPO / "deploy/postgres.sh")
    started = subprocess.run(
        [script, "start", folder, str(free_port())], capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip()
    subprocess.run([script, "stop", folder], timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


ADMIN = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "admin-secret-1"}
PIPELINE = {"MLFLOW_TRACKING_USERNAME": "pipeline", "MLFLOW_TRACKING_PASSWORD": "pipeline-pw-1"}
PROMOTER = {"MLFLOW_TRACKING_USERNAME": "promoter", "MLFLOW_TRACKING_PASSWORD": "promoter-pw-1"}


@pytest.fixture(scope="module")
def tracking_server(postgres_uri, tmp_path_factory):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")},
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "BACKEND_STORE_URI": postgres_uri,
        "ARTIFACTS_DESTINATION": tmp_path_factory.mktemp("artifacts").as_uri(),
        "AUTH_DATABASE_URI": postgres_uri,  # beside MLflow's tables, as deploy/ sets it up
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN["MLFLOW_TRACKING_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-test-key-not-used-anywhere-else",
        "PORT": str(port),
    }
    uri = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with running_server([str(REPO / "deploy/mlflow-server.sh")], f"{uri}/health", log, env):
        created = mlflow_users([], {"MLFLOW_TRACKING_URI": uri, **ADMIN})
        assert "created pipeline" in created and "created promoter" in created
        yield uri


def mlflow_users(args: list[str], env: dict[str, str]) -> str:
    """deploy/mlflow-users.py with the two identities' passwords; its output."""
    passwords = {"PIPELINE_PASSWORD": PIPELINE["MLFLOW_TRACKING_PASSWORD"],
                 "PROMOTER_PASSWORD": PROMOTER["MLFLOW_TRACKING_PASSWORD"]}  # fmt: skip
    done = subprocess.run(
        [str(BIN / "python"), str(REPO / "deploy/mlflow-users.py"), *args],
        env={**os.environ, **passwords, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextmanager
def credentials(identity: dict[str, str]):
    """MLflow's client in this process logs in as ``identity``."""
    before = {key: os.environ.get(key) for key in identity}
    os.environ.update(identity)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_the_server_answers_nobody_without_a_login(tracking_server):
    search = f"{tracking_server}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(search, timeout=10)
    assert refused.value.code == 401
    wrong = urllib.request.Request(search, headers={"Authorization": "Basic " + base64.b64encode(
        b"pipeline:not-the-password").decode()})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=10)
    assert refused.value.code == 401


def test_pipeline_registry_and_promotion_through_the_server(tracking_server, tmp_path):
    project = make_project(tmp_path / "project")
    env = {"MLFLOW_TRACKING_URI": tracking_server, **PIPELINE}
    run([str(BIN / "dvc"), "repro"], project, extra_env=env)
    assert not (project / "mlflow.db").exists(), "nothing went to the local SQLite store"
    promote = [str(BIN / "convvae"), "promote", "--model", "convvae-mnist-5k"]
    # The training identity registered the version (it owns the model) but may not move an alias.
    refused = run(promote, project, extra_env=env, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    lines = refused.stderr.splitlines()
    assert len(lines) == 1, refused.stderr  # one line, naming the fix
    line = lines[0]
    assert line.startswith("error: ") and "only the promoting identity (promoter) may" in line
    # The model's owner (the pipeline, which created it) lets the promoter edit it.
    mlflow_users(["--grant", "convvae-mnist-5k"], env)
    promoted = run(promote, project, extra_env={**env, **PROMOTER})
    assert "promote: v1" in promoted.stdout

    with credentials(PROMOTER):
        read_back(tracking_server, tmp_path)
    # Nor may the training identity re-tag a version: its tags are the registration record
    # (threshold, model digest) that guards the promoted artifact.
    with credentials(PIPELINE), pytest.raises(MlflowException) as refused:
        mlflow.MlflowClient(tracking_server).set_model_version_tag(
            "convvae-mnist-5k", "1", MODEL_DIGEST_TAG, "0" * 64
        )
    assert "may not tag an existing model version" in str(refused.value)
    remote = tmp_path / "dvc-remote"
    run([str(BIN / "dvc"), "remote", "add", "-d", "team", str(remote)], project)
    run([str(BIN / "dvc"), "push"], project)
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push stored the outputs"


def read_back(tracking_server: str, tmp_path) -> None:
    client = mlflow.MlflowClient(tracking_server)
    champion = client.get_model_version_by_alias("convvae-mnist-5k", "champion")
    assert str(champion.version) == "1"
    assert "promotion.audit" in champion.tags
    run_data = client.get_run(champion.run_id).data
    assert run_data.params["train.epochs"] == "2" and "test_neg_elbo" in run_data.metrics

    (tmp_path / "download").mkdir()  # MLflow would otherwise leave a folder in /tmp for good
    mlflow.set_tracking_uri(tracking_server)
    try:
        served = mlflow.pyfunc.load_model(
            "models:/convvae-mnist-5k@champion", dst_path=str(tmp_path / "download")
        )
        images = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
        assert served.predict(images)["score"].shape == (2,)
    finally:
        mlflow.set_tracking_uri(None)
