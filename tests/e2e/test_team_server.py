"""The team set-up: a real `mlflow server` on 127.0.0.1 with a PostgreSQL backend store.

Runs a short pipeline through it, registers and promotes a model, reads it back, and pushes the
DVC outputs to a remote. Needs Debian's postgresql (`make test` installs it as root); without it
the test skips, except in CI where it fails.
"""

import glob
import os
import shutil
import subprocess
import tempfile

import mlflow
import numpy as np
import pytest

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


@pytest.fixture(scope="module")
def tracking_server(postgres_uri, tmp_path_factory):
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "BACKEND_STORE_URI": postgres_uri,
        "ARTIFACTS_DESTINATION": tmp_path_factory.mktemp("artifacts").as_uri(),
        "PORT": str(port),
    }
    uri = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with running_server([str(REPO / "deploy/mlflow-server.sh")], f"{uri}/health", log, env):
        yield uri


def test_pipeline_registry_and_promotion_through_the_server(tracking_server, tmp_path):
    project = make_project(tmp_path / "project")
    env = {"MLFLOW_TRACKING_URI": tracking_server}
    run([str(BIN / "dvc"), "repro"], project, extra_env=env)
    assert not (project / "mlflow.db").exists(), "nothing went to the local SQLite store"
    promoted = run(
        [str(BIN / "convvae"), "promote", "--model", "convvae-mnist-5k"], project, extra_env=env
    )
    assert "promote: v1" in promoted.stdout

    client = mlflow.MlflowClient(tracking_server)
    champion = client.get_model_version_by_alias("convvae-mnist-5k", "champion")
    assert str(champion.version) == "1"
    assert "promotion.audit" in champion.tags
    run_data = client.get_run(champion.run_id).data
    assert run_data.params["train.epochs"] == "2" and "test_neg_elbo" in run_data.metrics

    mlflow.set_tracking_uri(tracking_server)
    try:
        served = mlflow.pyfunc.load_model("models:/convvae-mnist-5k@champion")
        images = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
        assert served.predict(images)["score"].shape == (2,)
    finally:
        mlflow.set_tracking_uri(None)

    remote = tmp_path / "dvc-remote"
    run([str(BIN / "dvc"), "remote", "add", "-d", "team", str(remote)], project)
    run([str(BIN / "dvc"), "push"], project)
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push stored the outputs"
