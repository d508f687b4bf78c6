"""What a folder costs: wall time and peak memory of every stage of `dvc repro evaluate` on a
generated MVTec-layout folder, against image size, channels and training-set size.

Each run builds a folder (tiles of a full-resolution scikit-image photograph: brick when grey,
immunohistochemistry when RGB; 40 test/good and 20 each of the tests' scratch and foreign-patch
defects, with masks), copies the pipeline into a fresh project (tests/e2e/project.py), sets
``data.source: folder`` and nothing else (every default: epochs, early stopping, samples,
tracking to the local store), and runs ``dvc repro evaluate`` (source, prepare, train,
evaluate). It records per stage the seconds from its "Running stage" line to the next and the
peak resident memory of the whole process tree (sampled every 0.2 s), and evaluate's own step
seconds. Results accumulate in docs/speed/folder-cost/results.jsonl (one line per run); the
table in docs/speed/folder-cost/README.md is rendered from all of them.

    .venv/bin/python speed/folder_cost.py 256:3:400 64:1:100   # SIZE:CHANNELS:TRAIN_IMAGES ...
    .venv/bin/python speed/folder_cost.py --render             # the table only

A run past ``--limit`` seconds (default 1800) is stopped and recorded as not finished, with the
stages it reached.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import skimage.data
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from speed.pipeline_timing import STAGE_LINE, cpu_name  # noqa: E402
from tests.e2e.project import BIN, make_project, project_env  # noqa: E402
from tests.mvtec import patch, scratch  # noqa: E402

OUT = REPO / "docs" / "speed" / "folder-cost"
STEP_LINE = re.compile(r"^evaluate: (.+) in ([0-9.]+) s$")
N_TEST_GOOD, N_PER_DEFECT = 40, 20


def build_folder(root: Path, size: int, channels: int, n_train: int, seed: int = 0) -> None:
    """train/good, test/good, test/{scratch,patch} and their masks: ``size`` px tiles, random
    crops (flipped at random) of a 512x512 photograph, upscaled first where ``size`` > 256 so a
    crop is never the whole photograph."""
    rng = np.random.default_rng(seed)
    photo = skimage.data.immunohistochemistry() if channels == 3 else skimage.data.brick()
    foreign = skimage.data.astronaut() if channels == 3 else skimage.data.camera()
    if size > photo.shape[0] // 2:
        scale = 2 * size / photo.shape[0]
        photo = np.asarray(Image.fromarray(photo).resize((round(512 * scale),) * 2))

    def tile() -> np.ndarray:
        top, left = rng.integers(0, photo.shape[0] - size + 1, 2)
        crop = photo[top : top + size, left : left + size]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        return np.ascontiguousarray(crop[::-1] if rng.random() < 0.5 else crop)

    def save(pixels: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)

    for i in range(n_train):
        save(tile(), root / "train/good" / f"{i:04d}.png")
    for i in range(N_TEST_GOOD):
        save(tile(), root / "test/good" / f"{i:03d}.png")
    for kind in ("scratch", "patch"):
        for i in range(N_PER_DEFECT):
            image, mask = scratch(tile(), rng) if kind == "scratch" else patch(tile(), foreign, rng)
            save(image, root / "test" / kind / f"{i:03d}.png")
            save(mask, root / "ground_truth" / kind / f"{i:03d}_mask.png")


class TreeMemory:
    """The peak resident memory (bytes) of a process and all its descendants, sampled in a
    thread, per label (the stage running when the sample was taken)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.label = "start"
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            total = 0
            try:
                for process in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # it may have just ended
                        total += process.memory_info().rss
            except psutil.Error:
                return
            self.peak[self.label] = max(self.peak.get(self.label, 0), total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_pipeline(project: Path, limit: float, log: Path) -> dict:
    """``dvc repro evaluate`` in ``project``: seconds and peak MB per stage, evaluate's steps;
    its whole output goes to ``log``."""
    env = project_env(project)
    command = [str(BIN / "dvc"), "repro", "evaluate"]
    seconds: dict[str, float] = {}
    steps: dict[str, float] = {}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    memory = TreeMemory(process.pid)
    # The whole group: killing dvc alone left its stage running on (a 256 px run went 309 s
    # past the limit, unsampled, before this).
    timer = threading.Timer(limit, os.killpg, (process.pid, signal.SIGKILL))
    timer.start()
    current, mark, tail = None, started, []
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        for line in process.stdout:
            out.write(line)
            out.flush()
            tail = [*tail[-30:], line.rstrip()]
            current, mark = _note(line, current, mark, seconds, steps, memory)
    process.wait()
    timer.cancel()
    memory.stop()
    end = time.perf_counter()
    if current is not None:
        seconds[current] = end - mark
    result = {
        "finished": process.returncode == 0,
        "total_s": round(end - started, 1),
        "stage_s": {k: round(v, 1) for k, v in seconds.items()},
        "stage_peak_mb": {k: round(v / 2**20) for k, v in memory.peak.items() if k != "start"},
        "evaluate_steps_s": steps,
    }
    if process.returncode != 0:
        result["tail"] = tail[-8:]
    return result


def _note(line: str, current, mark: float, seconds: dict, steps: dict, memory: TreeMemory):
    """Reads one output line: a new stage starts its clock and memory label, a step's seconds
    are kept. Returns the current stage and when it started."""
    if match := STAGE_LINE.match(line):
        now = time.perf_counter()
        if current is not None:
            seconds[current] = now - mark
        memory.label = match.group(1)
        return match.group(1), now
    if match := STEP_LINE.match(line.strip()):
        steps[match.group(1)] = float(match.group(2))
    return current, mark


def one_run(size: int, channels: int, n_train: int, limit: float, scratch_dir: Path) -> dict:
    folder, project = scratch_dir / "folder", scratch_dir / "project"
    project.mkdir()
    build_folder(folder, size, channels, n_train)
    make_project(project)
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())  # undo the quick-run params
    defaults["data"].update(source="folder", path=str(folder))
    (project / "params.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
    result = run_pipeline(project, limit, OUT / "logs" / f"{size}px-{channels}ch-{n_train}.log")
    train = project / "metrics" / "train.json"
    if train.is_file():
        metrics = json.loads(train.read_text())
        result["epochs_run"] = metrics.get("epochs_run")
        result["images_per_s"] = metrics.get("images_per_s")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "size": size,
        "channels": channels,
        "train_images": n_train,
        **result,
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "commit": commit,
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
    }


def render(rows: list[dict]) -> str:
    """The markdown table of every recorded run, the newest per configuration."""
    latest = {(r["size"], r["channels"], r["train_images"]): r for r in rows}
    stages = ("source", "prepare", "train", "evaluate")
    lines = [
        "| size | channels | train images | epochs | train img/s | "
        + " | ".join(f"{s} s" for s in stages)
        + " | total s | peak MB (stage) | slowest evaluate steps (s) | machine, commit |",
        "|" + "---:|" * (6 + len(stages)) + "---|" * 3,
    ]
    for key in sorted(latest):
        row = latest[key]
        peaks = row["stage_peak_mb"]
        worst = max(peaks, key=peaks.get) if peaks else "-"
        top = sorted(row["evaluate_steps_s"].items(), key=lambda kv: -kv[1])[:3]
        total = f"{row['total_s']:.0f}" + ("" if row["finished"] else " (stopped)")
        lines.append(
            f"| {row['size']} | {row['channels']} | {row['train_images']} | "
            f"{row.get('epochs_run', '-')} | {round(row.get('images_per_s') or 0) or '-'} | "
            + " | ".join(str(row["stage_s"].get(s, "-")) for s in stages)
            + f" | {total} | {peaks.get(worst, '-')} ({worst}) | "
            + ", ".join(f"{name} {s:.0f}" for name, s in top)
            + f" | {row['machine'].split(',')[0][:24]}, {row['commit']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="SIZE:CHANNELS:TRAIN_IMAGES, e.g. 256:3:400")
    parser.add_argument("--limit", type=float, default=1800, help="seconds before a run stops")
    parser.add_argument("--render", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / "results.jsonl"
    for spec in [] if args.render else args.runs:
        size, channels, n_train = (int(part) for part in spec.split(":"))
        with tempfile.TemporaryDirectory(prefix="folder-cost-") as scratch_dir:
            row = one_run(size, channels, n_train, args.limit, Path(scratch_dir))
        print(json.dumps(row), flush=True)
        with results.open("a") as out:
            out.write(json.dumps(row) + "\n")
    rows = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    )
    table = OUT / "table.md"
    table.write_text(render(rows))
    print(table.read_text())


if __name__ == "__main__":
    main()
