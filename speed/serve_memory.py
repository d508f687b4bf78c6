"""The serving process's memory around large requests: `convvae serve` (limits in front) and
`mlflow models serve` (none) on the same registered model; prints resident memory (VmRSS) at
start, its peak (VmHWM) and after each request, in MiB.

    .venv/bin/python speed/serve_memory.py [models:/convvae-mnist-5k/latest]

Requests, in order: the largest `convvae serve` accepts (max_images images), then one of twice
that many images (over the limit: `convvae serve` refuses it from its Content-Length, MLflow
parses it first), then a declared 600 MB body. Needs a registered model in the repository's
store (`make run` registers one); the servers listen on 127.0.0.1 only and are stopped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from convvae.serving import max_images  # noqa: E402
from tests.e2e.servers import free_port, running_server  # noqa: E402

BIN = Path(sys.executable).parent
SHAPE = (1, 28, 28)  # the default pipeline's model
# MLflow's server starts `uvicorn` from PATH: the venv's.
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}


def memory_mib(session: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak), MiB, summed over the server's session: `mlflow models serve`
    scores in a uvicorn child, `convvae serve` in its own process."""
    total = {"rss": 0.0, "peak": 0.0}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or os.getsid(int(proc.name)) != session:
                continue
            lines = (proc / "status").read_text().splitlines()
        except (OSError, ProcessLookupError):
            continue
        fields = {line.split(":")[0]: line.split()[1] for line in lines if line.startswith("Vm")}
        if "VmRSS" in fields:
            total["rss"] += int(fields["VmRSS"]) / 1024
            total["peak"] += int(fields["VmHWM"]) / 1024
    return total


def post(port: int, body: bytes, declared: int | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.putrequest("POST", "/invocations")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(declared or len(body)))
    connection.endheaders(body)
    status = connection.getresponse().status
    connection.close()
    return status


def measure(cmd: list[str], port: int, requests: dict[str, tuple[bytes, int | None]]) -> None:
    with (
        tempfile.TemporaryDirectory() as folder,
        running_server(
            cmd, f"http://127.0.0.1:{port}/ping", Path(folder) / "server.log", ENV
        ) as server,
    ):
        start = memory_mib(server.pid)
        print(f"  at start: RSS {start['rss']:.0f}")
        for name, (body, declared) in requests.items():
            status = post(port, body, declared)
            time.sleep(1)  # memory is given back once the reply is sent
            after = memory_mib(server.pid)
            print(
                f"  {name}: HTTP {status}; peak so far {after['peak']:.0f}, "
                f"RSS after {after['rss']:.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models:/convvae-mnist-5k/latest")
    args = parser.parse_args()
    allowed = max_images(SHAPE)
    rng = np.random.default_rng(0)
    bodies = {
        n: json.dumps({"inputs": rng.random((n, *SHAPE)).tolist()}).encode()
        for n in (allowed, 2 * allowed)
    }
    requests = {
        f"{allowed} images ({len(bodies[allowed]) / 2**20:.0f} MiB of JSON)": (
            bodies[allowed],
            None,
        ),
        f"{2 * allowed} images ({len(bodies[2 * allowed]) / 2**20:.0f} MiB)": (
            bodies[2 * allowed],
            None,
        ),
        "a declared 600 MB body (12 bytes sent)": (b'{"inputs": [', 600_000_000),
    }
    port = free_port()
    print(f"convvae serve {args.model}:")
    measure([str(BIN / "convvae"), "serve", "--model", args.model, "--port", str(port)], port,
            requests)  # fmt: skip
    port = free_port()
    print(f"mlflow models serve {args.model} (the 600 MB request left out: it would wait for it):")
    mlflow = [str(BIN / "mlflow"), "models", "serve", "-m", args.model, "--env-manager", "local"]
    del requests["a declared 600 MB body (12 bytes sent)"]
    measure([*mlflow, "-h", "127.0.0.1", "-p", str(port)], port, requests)


if __name__ == "__main__":
    main()
