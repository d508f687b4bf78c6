"""Training checkpoints: the whole state of an interrupted run, written atomically.

A checkpoint records the inputs it was made for (its ``config`` fingerprint); one made for other
inputs is not resumed. A file that torch cannot read is a CheckpointError that says to delete it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from convvae.errors import CheckpointError
from convvae.runtime.files import atomic_path

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` (tensors, dicts, numbers) to ``path`` in one rename."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(path: Path | None, device: torch.device) -> dict[str, Any] | None:
    """The state saved at ``path``, or None when there is no checkpoint to resume."""
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        state["config"]  # noqa: B018 - a file without the fingerprint is not ours
    except Exception as err:  # torch raises many types for a corrupt file
        raise CheckpointError(
            f"{path}: unreadable training checkpoint ({type(err).__name__}); delete it to "
            "start training afresh"
        ) from None
    return state


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Top-level keys whose values differ between two fingerprints, sorted."""
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
