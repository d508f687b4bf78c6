"""Wall-clock seconds of every stage of `dvc repro`, as a user's run sees them.

Runs ``dvc repro [ARGS]`` (default ``-f``: every stage, nothing cached), streams its output, and
times each stage from its "Running stage" line to the next (process start, imports, the work and
DVC's bookkeeping included). Prints one line per stage, then the total, the date and the machine.

    .venv/bin/python speed/pipeline_timing.py            # make timings
    .venv/bin/python speed/pipeline_timing.py -- -s evaluate
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def cpu_name() -> str:
    """The processor's model name (Linux), else what platform reports."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(args: list[str]) -> int:
    dvc = Path(sys.executable).with_name("dvc")
    command = [str(dvc), "repro", *(args or ["-f"])]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    seconds: dict[str, float] = {}
    current, started = None, time.perf_counter()
    mark = started
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            match = STAGE_LINE.match(line)
            if match:
                now = time.perf_counter()
                if current is not None:
                    seconds[current] = now - mark
                current, mark = match.group(1), now
    end = time.perf_counter()
    if current is not None:
        seconds[current] = end - mark
    print(f"\n{'stage':<22}{'seconds':>9}")
    for stage, value in seconds.items():
        print(f"{stage:<22}{value:>9.1f}")
    print(f"{'total (dvc repro)':<22}{end - started:>9.1f}")
    today = dt.date.today().isoformat()
    print(f"{today}, {cpu_name()}, {os.cpu_count()} cores; exit code {process.returncode}")
    return process.returncode


if __name__ == "__main__":
    raise SystemExit(main([a for a in sys.argv[1:] if a != "--"]))
