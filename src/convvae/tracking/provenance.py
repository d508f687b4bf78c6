"""Where a run came from: git commit, DVC experiment, dvc.lock hashes, device, package versions.

Plain facts about this checkout and machine, gathered for the tracker to record; no MLflow here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "mlflow", "dvc", "numpy", "scikit-learn", "convvae")


def repository_root(start: Path | None = None) -> Path:
    """The main repository's root, also from inside ``dvc exp run --temp``'s throw-away copy.

    DVC runs temporary and queued experiments in ``<root>/.dvc/tmp/exps/<name>``; a store
    relative to that copy would vanish with it.
    """
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def provenance_tags(root: Path) -> dict[str, str]:
    """Git commit and dirty flag, DVC experiment, dvc.lock stage hashes, device, versions."""
    tags = {"device": _device_name()}
    commit = _git(root, "rev-parse", "HEAD")
    if commit is not None:
        tags["git.commit"] = commit
        tags["git.dirty"] = str(bool(_git(root, "status", "--porcelain", "--untracked-files=no")))
    for env, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    tags.update(_dvc_lock_hashes(root))
    for package in PACKAGES:
        try:
            tags[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return tags


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _dvc_lock_hashes(root: Path) -> dict[str, str]:
    """sha256 (first 12 hex digits) of each stage's entry in dvc.lock, as recorded so far."""
    import yaml

    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    # Matrix stages are named `stage@value`; MLflow tag keys refuse '@'.
    return {
        f"dvc.lock.{name.replace('@', ':')}": hashlib.sha256(
            yaml.safe_dump(entry).encode()
        ).hexdigest()[:12]
        for name, entry in stages.items()
    }


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
