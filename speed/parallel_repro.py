"""`dvc repro` with independent stages side by side, and what it saves (`make repro-parallel`).

DVC runs the stages of one repository one after another (its lock covers the whole `repro`), yet
most of the default pipeline is independent: the ten class stages of the benchmark need only
`prepare`, as `train` does. This runs DVC's own stage graph (``Repo().index.graph``) with up to
``--jobs`` stage commands at once: a stage starts when every stage it depends on is done, its
command gets ``OMP_NUM_THREADS`` = cores // jobs (two processes with all cores' threads each
collapse throughput on these machines), and each finished stage is recorded with
`dvc commit -f STAGE` (dvc.lock and the cache, as `repro` records it). A stage runs when forced,
when `dvc status` names it, or when a stage it depends on ran.

    .venv/bin/python speed/parallel_repro.py --jobs 2 [--force] [--compare]

``--compare`` first runs `dvc repro -f` (serial) and then ``--force --jobs N``, on this machine,
and prints both wall times and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage_graph() -> tuple[dict[str, str], dict[str, set[str]]]:
    """(each stage's command, the stages each one depends on), from DVC's own graph."""
    from dvc.repo import Repo

    graph = Repo(str(REPO)).index.graph  # an edge runs from a stage to one it depends on
    commands = {stage.addressing: stage.cmd for stage in graph}
    upstream = {stage.addressing: {up.addressing for up in graph.successors(stage)}
                for stage in graph}  # fmt: skip
    return commands, upstream


def changed_stages() -> set[str]:
    found = subprocess.run(["dvc", "status", "--json"], cwd=REPO, capture_output=True, text=True,
                           check=True)  # fmt: skip
    return set(json.loads(found.stdout or "{}"))


def run_stage(name: str, command: str, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"stage {name} failed ({command}):\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def repro_parallel(jobs: int, force: bool) -> dict[str, float]:
    """Run the stages (module docstring); each stage's seconds."""
    commands, upstream = stage_graph()
    downstream = {name: {d for d in commands if name in upstream[d]} for name in commands}

    def height(name: str) -> int:
        return 1 + max((height(d) for d in downstream[name]), default=0)

    def priority(name: str) -> tuple[int, int, str]:
        """Longest chain below first; then the stage that frees a stage waiting on fewest
        others (train frees evaluate; one class stage of ten does not free the report)."""
        frees = min((len(upstream[d]) for d in downstream[name]), default=0)
        return -height(name), frees, name

    stale = set(commands) if force else changed_stages()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    done: set[str] = set()
    ran: set[str] = set()
    seconds: dict[str, float] = {}
    running: dict[Future, str] = {}
    with ThreadPoolExecutor(jobs) as pool:
        while len(done) < len(commands):
            for name in sorted(set(commands) - done - set(running.values()), key=priority):
                if not upstream[name] <= done or len(running) >= jobs:
                    continue
                if name in stale or upstream[name] & ran:
                    running[pool.submit(run_stage, name, commands[name], threads)] = name
                else:
                    done.add(name)  # up to date
            if not running:
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                seconds[name] = future.result()
                # Recorded one at a time, from here: DVC's lock is per repository.
                subprocess.run(["dvc", "commit", "-f", "-q", name], cwd=REPO, check=True)
                print(f"{name}: {seconds[name]:.1f} s", flush=True)
                done.add(name)
                ran.add(name)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="run every stage, as repro -f")
    parser.add_argument("--compare", action="store_true", help="time repro -f against it")
    args = parser.parse_args()
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    serial = None
    if args.compare:
        started = time.perf_counter()
        subprocess.run(["dvc", "repro", "-f", "-q"], cwd=REPO, check=True)
        serial = time.perf_counter() - started
        print(f"dvc repro -f (serial): {serial:.1f} s", flush=True)
    started = time.perf_counter()
    repro_parallel(args.jobs, args.force or args.compare)
    parallel = time.perf_counter() - started
    print(f"parallel, {args.jobs} jobs of {max(1, (os.cpu_count() or 1) // args.jobs)} threads: "
          f"{parallel:.1f} s")  # fmt: skip
    if serial is not None:
        print(f"speed-up: {serial / parallel:.2f}x ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
