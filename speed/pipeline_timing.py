"""Wall-clock seconds of every stage of `dvc repro`, as a user's run sees them.

Runs ``dvc repro [ARGS]`` (default ``-f``: every stage, nothing cached), streams its output, and
times each stage from its "Running stage" line to the next (process start, imports, the work and
DVC's bookkeeping included). Prints one line per stage, then the total, the date and the machine.
A full run (no ARGS) that succeeds also writes them to docs/speed/timings.md, the one place the
README and docs point to for the pipeline's timings.

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
TIMINGS = Path(__file__).resolve().parents[1] / "docs" / "speed" / "timings.md"


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
    load_before = os.getloadavg()[0]  # what else the machine was doing, 1-minute average
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
    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    today = dt.date.today().isoformat()
    print(f"{today}, {machine}; exit code {process.returncode}")
    if not args and process.returncode == 0:
        write_timings(seconds, end - started, today, f"{machine}, load {load_before:.2f} before")
        print(f"written to {TIMINGS}")
    return process.returncode


def write_timings(seconds: dict[str, float], total: float, today: str, machine: str) -> None:
    """docs/speed/timings.md: the table of the last full run, with its commit and machine."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    rows = "".join(f"| {stage} | {value:.1f} |\n" for stage, value in seconds.items())
    TIMINGS.write_text(
        "# Pipeline timings\n\n"
        "Written by `make timings` (`speed/pipeline_timing.py`): every stage of `dvc repro -f` "
        'on the embedded default data, from its "Running stage" line to the next (process '
        "start, imports, the work and DVC's bookkeeping included). Regenerate it after a change "
        "that moves these numbers; nothing else in the project quotes them.\n\n"
        f"Last run: {today}, commit {commit or 'unknown'}, {machine}.\n\n"
        f"| stage | seconds |\n|---|---:|\n{rows}| **total (dvc repro -f)** | **{total:.1f}** |\n"
    )


if __name__ == "__main__":
    raise SystemExit(main([a for a in sys.argv[1:] if a != "--"]))
