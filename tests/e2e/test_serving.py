"""`mlflow models serve` of models:/NAME@champion answers POST /invocations on loopback."""

import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import anomaly_maps, score_images
from convvae.anomaly.thresholds import calibrate
from convvae.cli.serve import CONCURRENCY
from convvae.data.splits import selection_and_calibration
from convvae.model.files import save_model
from convvae.serving import MAX_BATCH
from tests.e2e.servers import free_port, running_server

pytestmark = pytest.mark.e2e
SPEC = ScoreSpec("excess_nll", samples=8, noise_seed=0)
BIN = Path(sys.executable).parent


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
def champion_store(local_tracker, tmp_path, trained, mnist_slice):
    """The tiny model, registered with its threshold record (the excess_nll deviance, conformal
    on half of the validation images), as @champion."""
    tracker = local_tracker
    example = mnist_slice.test.images[:2].astype(np.float32) / 255
    save_model(trained, tmp_path / "model.pt")
    _, calibration = selection_and_calibration(mnist_slice.val.images)
    record = calibrate(Scorer(trained, None, SPEC), calibration, 0.05)
    with tracker.run():
        version = tracker.log_model(
            trained, tmp_path / "model.pt", example, "convvae-serve", {}, record.as_json()
        )
    tracker.registry.set_alias("convvae-serve", "champion", version)
    return tracker.uri, record


def test_served_champion_scores_images(champion_store, trained, mnist_slice, tmp_path):
    uri, record = champion_store
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/convvae-serve@champion"]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, f"{base}/ping", tmp_path / "serve.log", env):
        digits = mnist_slice.test.images[:3].astype(np.float32) / 255
        status, body = post(f"{base}/invocations", {"inputs": digits.tolist()})
        assert status == 200, body
        predictions = body["predictions"]
        scores = np.array(predictions["score"])
        assert scores.shape == (3,) and np.all(scores > 0)
        # One score everywhere: the served score is score_images' on the same pixels.
        scorer = Scorer(trained, None, SPEC)
        local = score_images(scorer, mnist_slice.test.images[:3])
        np.testing.assert_allclose(scores, local, rtol=1e-5)
        decided = record.decide(local)
        np.testing.assert_allclose(predictions["p_value"], decided["p_value"])
        assert predictions["is_anomaly"] == decided["is_anomaly"].tolist()
        # The names before 0.2 are served beside the new ones for one release.
        assert set(predictions) == {
            "score", "p_value", "is_anomaly", "anomaly_score", "normalized_score"
        }  # fmt: skip
        assert predictions["anomaly_score"] == predictions["score"]
        assert predictions["normalized_score"] == predictions["p_value"]
        asked = {"return_reconstruction": True, "return_anomaly_map": True}
        status, body = post(f"{base}/invocations", {"inputs": digits.tolist(), "params": asked})
        assert status == 200, body
        assert np.array(body["predictions"]["reconstruction"]).shape == (3, 1, 28, 28)
        maps = np.array(body["predictions"]["anomaly_map"])
        np.testing.assert_allclose(maps, anomaly_maps(scorer, mnist_slice.test.images[:3]),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
        too_many = np.zeros((MAX_BATCH + 1, 1, 28, 28), dtype=np.float32)
        status, body = post(f"{base}/invocations", {"inputs": too_many.tolist()})
        assert status == 400 and f"at most {MAX_BATCH}" in json.dumps(body), body
        noise = np.random.default_rng(0).random((1, 1, 28, 28)).astype(np.float32)
        _, noisy = post(f"{base}/invocations", {"inputs": noise.tolist()})
        assert noisy["predictions"]["score"][0] > scores.max()
        wrong = np.zeros((1, 1, 32, 32), dtype=np.float32)
        status, body = post(f"{base}/invocations", {"inputs": wrong.tolist()})
        assert status == 400 and "shape" in body["message"], body
        nan = digits[:1].copy()
        nan[0, 0, 5, 5] = np.nan
        status, body = post(f"{base}/invocations", {"inputs": nan.tolist()})
        # MLflow answers 400 and carries our one-line reason in the error body.
        assert status == 400 and "pixel values must lie in [0, 1]" in json.dumps(body), body


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc), MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
        / 1024
    )


def test_convvae_serve_refuses_oversized_requests_before_reading_them(
    champion_store, trained, mnist_slice, tmp_path
):
    from convvae.serving import max_body_bytes

    uri, _ = champion_store
    # Whoever can write the artifact store edits the version's MLmodel to load planted code:
    # `convvae serve` reads the weights itself and imports nothing the artifact names.
    import mlflow
    import yaml

    client = mlflow.MlflowClient()
    source = client.get_model_version_by_alias("convvae-serve", "champion").source
    logged = client.get_logged_model(source.removeprefix("models:/"))
    artifact = Path(logged.artifact_location.removeprefix("file://"))
    marker = tmp_path / "planted-code-ran"
    (artifact / "code").mkdir()
    (artifact / "code" / "planted.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom convvae.serving import _load_pyfunc\n"
    )
    mlmodel = yaml.safe_load((artifact / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"] |= {"code": "code", "loader_module": "planted"}
    (artifact / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = [str(BIN / "convvae"), "serve", "--model", "models:/convvae-serve@champion"]
    cmd += ["--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    limit = max_body_bytes((1, 28, 28))
    with running_server(cmd, f"{base}/ping", tmp_path / "serve.log", env) as server:
        # The same answers as `mlflow models serve` (the same scoring app behind the limits).
        digits = mnist_slice.test.images[:3].astype(np.float32) / 255
        status, body = post(f"{base}/invocations", {"inputs": digits.tolist()})
        assert status == 200, body
        local = score_images(Scorer(trained, None, SPEC), mnist_slice.test.images[:3])
        np.testing.assert_allclose(body["predictions"]["score"], local, rtol=1e-5)
        # At most CONCURRENCY requests in flight, slow bodies included (first, while no other
        # connection is open): the next is answered 503 at once; served again once they end.
        held = [sending_slowly(port) for _ in range(CONCURRENCY - 1)]
        time.sleep(1)  # the server has taken them in
        assert status_of(f"{base}/ping") == 200
        held.append(sending_slowly(port))
        time.sleep(1)
        assert status_of(f"{base}/ping") == 503
        for connection in held:
            connection.close()
        assert status_within(f"{base}/ping", 200)
        # A declared 1 GB body is refused from its header: nothing read, nothing parsed.
        before, started = rss_mib(server.pid), time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(10**9))
        connection.endheaders(b'{"inputs": [')
        reply = connection.getresponse()
        assert reply.status == 413 and f"at most {limit}" in reply.read().decode()
        assert time.monotonic() - started < 5 and rss_mib(server.pid) - before < 20
        # A chunked body (no length) is stopped as soon as it passes the limit.
        chunk = b" " * (1 << 20)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request(
            "POST", "/invocations", body=iter([chunk] * (limit // len(chunk) + 1)),
            headers={"Content-Type": "application/json"}, encode_chunked=True,
        )  # fmt: skip
        assert connection.getresponse().status == 413
        # Only JSON: a parquet or CSV body expands far beyond its bytes when MLflow parses it.
        for kind in ("application/vnd.apache.parquet", "text/csv"):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", "/invocations", body=b"PAR1", headers={"Content-Type": kind})
            assert connection.getresponse().status == 415
        # Errors name their reason without a stack trace.
        too_many = np.zeros((MAX_BATCH + 1, 1, 28, 28), dtype=np.float32)
        status, body = post(f"{base}/invocations", {"inputs": too_many.tolist()})
        assert status == 400 and f"at most {MAX_BATCH}" in body["reason"], body
        assert "stack_trace" not in body and 'File "' not in json.dumps(body)
    assert not marker.exists()


def sending_slowly(port: int):
    """A connection whose request has sent its headers and the start of its body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest("POST", "/invocations")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", "100")
    connection.endheaders(b'{"inputs": [')
    return connection


def status_of(url: str) -> int:
    """The HTTP status of GET ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def status_within(url: str, expected: int, seconds: float = 10) -> bool:
    """Whether GET ``url`` answers ``expected`` within ``seconds`` (the server notices closed
    connections a moment later)."""
    deadline = time.monotonic() + seconds
    while (status := status_of(url)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return status == expected
