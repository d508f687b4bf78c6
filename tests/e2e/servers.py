"""Servers that e2e tests start on loopback: a free port, start, wait until ready, stop."""

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(
    cmd: list[str],
    ready_url: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in its own session; yield once ``ready_url`` answers; then stop all of it."""
    with log_path.open("w") as log:
        server = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"{cmd[0]} not ready in {timeout_s} s"
                time.sleep(1)
        yield server
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and any workers it started
        server.wait(timeout=30)
