"""The MLflow UI on loopback: REST API holds the runs and versions; Chromium shows the run table."""

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from convvae.model.files import save_model
from tests.e2e.servers import free_port, running_server

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",
]


def get(url: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def store_with_runs(local_tracker, tmp_path, trained, mnist_slice):
    tracker = local_tracker
    save_model(trained, tmp_path / "model.pt")
    example = mnist_slice.test.images[:2].astype("float32") / 255
    for name, lr, loss in (("lr-0.001", 0.001, 130.0), ("lr-0.003", 0.003, 120.0)):
        with tracker.run(run_name=name):
            tracker.log_params({"train": {"lr": lr}})
            tracker.log_history(
                [{"epoch": 1, "val_loss": loss + 20}, {"epoch": 2, "val_loss": loss}]
            )
            tracker.log_metrics({"test_neg_elbo": loss})
    with tracker.run(run_name="registered"):
        tracker.log_model(trained, tmp_path / "model.pt", example, "convvae-ui", {})
    return tracker.uri


@pytest.fixture
def ui(store_with_runs, tmp_path):
    port = free_port()
    cmd = [str(BIN / "mlflow"), "ui", "--backend-store-uri", store_with_runs]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, f"{base}/health", tmp_path / "ui.log"):
        yield base


def test_rest_api_and_run_table(ui, tmp_path):
    query = urllib.parse.urlencode({"experiment_name": "convvae"})
    experiment = get(f"{ui}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
    runs = get(
        f"{ui}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]}
    )["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert {"lr-0.001", "lr-0.003", "registered"} <= set(by_name)
    metrics = {m["key"]: m["value"] for m in by_name["lr-0.003"]["data"]["metrics"]}
    assert metrics["test_neg_elbo"] == 120.0
    versions = get(f"{ui}/api/2.0/mlflow/model-versions/search?filter=name%3D%27convvae-ui%27")
    assert [v["version"] for v in versions["model_versions"]] == ["1"]

    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    page = f"{ui}/#/experiments/{experiment['experiment_id']}/runs"
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "lr-0.001" in dom and "lr-0.003" in dom, "the run table lists both runs"
    screenshot = Path(os.environ.get("CONVVAE_SCREENSHOT", tmp_path / "mlflow-runs.png"))
    subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={screenshot}",
            page,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(screenshot) as image:
        assert image.size == (1600, 1000)
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or []) > 50  # not blank
