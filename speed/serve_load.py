"""Latency of the served model under load: `mlflow models serve` on loopback, 4 concurrent
clients, requests of 1, 8 and 32 images; prints p50 / p99 per batch size.

    .venv/bin/python speed/serve_load.py [models:/convvae-mnist-5k@champion] [--requests 40]

Needs a registered model in the repository's MLflow store (`make run` registers one). Bounded:
each client sends ``--requests`` requests per batch size, the server listens on 127.0.0.1 only
and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.e2e.servers import free_port, running_server  # noqa: E402

CLIENTS = 4
BATCH_SIZES = (1, 8, 32)


def post(url: str, images: np.ndarray) -> float:
    """Seconds for one answered request (an error status raises)."""
    body = json.dumps({"inputs": images.tolist()}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return time.perf_counter() - started


def measure(url: str, images: np.ndarray, batch: int, requests: int) -> list[float]:
    """Latencies of CLIENTS clients each sending ``requests`` requests of ``batch`` images."""
    rng = np.random.default_rng(batch)

    def client(_: int) -> list[float]:
        picks = [rng.choice(len(images), batch, replace=False) for _ in range(requests)]
        return [post(url, images[pick]) for pick in picks]

    with ThreadPoolExecutor(CLIENTS) as pool:
        return [t for times in pool.map(client, range(CLIENTS)) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="models:/convvae-mnist-5k@champion")
    parser.add_argument("--requests", type=int, default=40, help="per client and batch size")
    args = parser.parse_args()
    images = np.load(REPO / "data/prepared/splits.npz")["test_images"][:512] / np.float32(255)
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{REPO}/mlflow.db"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", args.model, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp()) / "serve.log"
    with running_server(cmd, f"{base}/ping", log, env):
        post(f"{base}/invocations", images[:2])  # warm-up
        print(f"{args.model}, {CLIENTS} concurrent clients, {args.requests} requests each")
        print(f"{'images/request':>15}{'p50 ms':>10}{'p99 ms':>10}{'images/s':>10}")
        for batch in BATCH_SIZES:
            started = time.perf_counter()
            times = measure(f"{base}/invocations", images, batch, args.requests)
            wall = time.perf_counter() - started
            p50, p99 = np.percentile(times, [50, 99]) * 1000
            print(f"{batch:>15}{p50:>10.1f}{p99:>10.1f}{len(times) * batch / wall:>10.0f}")


if __name__ == "__main__":
    main()
