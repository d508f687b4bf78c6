"""`mlflow models serve` of models:/NAME@champion answers POST /invocations on loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from convvae.config import TrackingConfig
from convvae.model import save_model
from convvae.tracking import Tracker

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture
def champion_store(tmp_path, monkeypatch, trained, mnist_slice):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(TrackingConfig(experiment="serve"), root=tmp_path)
    example = mnist_slice.test.images[:2].astype(np.float32) / 255
    save_model(trained, tmp_path / "model.pt")
    with tracker.run():
        version = tracker.log_model(trained, tmp_path / "model.pt", example, "convvae-serve", {})
    tracker.set_alias("convvae-serve", "champion", version)
    mlflow.set_tracking_uri(None)
    return tracker.uri


def test_served_champion_scores_images(champion_store, mnist_slice, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": champion_store,
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/convvae-serve@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "server did not start in 120 s"
                time.sleep(1)
        digits = mnist_slice.test.images[:3].astype(np.float32) / 255
        status, body = post(f"http://127.0.0.1:{port}/invocations", {"inputs": digits.tolist()})
        assert status == 200, body
        predictions = body["predictions"]
        scores = np.array(predictions["anomaly_score"])
        assert scores.shape == (3,) and np.all(scores > 0)
        assert np.array(predictions["reconstruction"]).shape == (3, 1, 28, 28)
        noise = np.random.default_rng(0).random((1, 1, 28, 28)).astype(np.float32)
        _, noisy = post(f"http://127.0.0.1:{port}/invocations", {"inputs": noise.tolist()})
        assert noisy["predictions"]["anomaly_score"][0] > scores.max()
        wrong = np.zeros((1, 1, 32, 32), dtype=np.float32)
        status, body = post(f"http://127.0.0.1:{port}/invocations", {"inputs": wrong.tolist()})
        assert status == 400 and "shape" in body["message"], body
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn workers
        server.wait(timeout=30)
