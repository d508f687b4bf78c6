"""`make lock`: pyproject.toml's dependencies pinned with their PyPI hashes, in two files:
requirements.lock (what the package and the image need) and requirements-dev.lock (tests, lint,
the lock tool: installed after it, never in the image). Pins already in requirements.lock are
kept unless pyproject.toml rules them out (uv pip compile with it as a constraint)."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UV = [str(Path(sys.executable).parent / "uv"), "pip", "compile", "pyproject.toml", "--quiet",
      "--generate-hashes", "--no-annotate", "--no-header", "--python-version", "3.11",
      "--python-platform", "x86_64-manylinux_2_28"]  # fmt: skip
HEADER = "# {}: written by `make lock` (.ci/lock.py, hashes from PyPI); do not edit.\n"


def compile_lock(*extra: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        pins = Path(folder) / "pins.txt"
        old = [*(REPO / "requirements.lock").read_text().splitlines(),
               *(REPO / "requirements-dev.lock").read_text().splitlines()]  # fmt: skip
        pins.write_text("\n".join(re.sub(r"\s*\\$", "", s) for s in old if "==" in s) + "\n")
        out = Path(folder) / "out.txt"
        subprocess.run([*UV, *extra, "-c", str(pins), "-o", str(out)], cwd=REPO, check=True)
        return out.read_text()


def blocks(text: str) -> dict[str, str]:
    """name -> its pin line and hash lines."""
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.strip()):
        if not block.startswith("#") and "==" in block.splitlines()[0]:
            pins[block.split("==")[0].lower()] = block.rstrip()
    return pins


def main() -> None:
    runtime = blocks(compile_lock())
    dev = {k: v for k, v in blocks(compile_lock("--extra", "dev")).items() if k not in runtime}
    for path, title, pins in (
        ("requirements.lock", "The runtime dependencies, pinned with their hashes", runtime),
        ("requirements-dev.lock", "Tests, lint and the lock tool", dev),
    ):
        (REPO / path).write_text(HEADER.format(title) + "\n".join(pins.values()) + "\n")
        print(f"{path}: {len(pins)} packages")


if __name__ == "__main__":
    main()
