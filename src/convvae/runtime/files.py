"""File output: atomic writes (a temporary name in the same folder, then a rename, so a killed
process never leaves half a file under the final name), JSON in and out, and the names of a
model's files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from convvae.errors import DataError

# Beside a model file: its threshold record (convvae.anomaly.thresholds).
THRESHOLD_FILE = "threshold.json"


@dataclass(frozen=True)
class ClassFiles:
    """Where one class of the one-class benchmark writes its results (a DVC stage's outputs)."""

    model: Path
    threshold: Path  # beside the model: THRESHOLD_FILE
    replicates: Path  # beside the model: every method's ROC-AUC bootstrap replicates (.npz)
    metrics: Path
    roc: Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces ``path`` in one rename.

    The temporary file is created here, exclusively and under a random name (mkstemp): a
    predictable name could be a symlink planted to make the write land elsewhere. It gets the
    permissions a plain new file would (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """``write`` fills an open binary file that replaces ``path`` when it returns.

    A failed write is an OSError (ENOSPC, EDQUOT, EFBIG) naming ``path``, for the one-line
    error of ``convvae.errors.exit_on_error``."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as handle:
                write(handle)
        except OSError as err:
            err.filename = err.filename or str(path)
            raise


def save_torch_file(payload: Any, path: str | Path) -> None:
    """torch.save ``payload`` to ``path`` atomically. Serialised in memory first: torch.save
    writing a file itself turns a full disk into a RuntimeError about zip offsets (given a
    name or a handle: its writer swallows the OSError)."""
    import torch  # here: the data stages import this module and need no torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomically(path, lambda handle: handle.write(buffer.getbuffer()))


def file_sha256(path: str | Path) -> str:
    """The file's sha256 (hex), read in blocks."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _umask() -> int:
    # The process umask can only be read by setting it; done once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_json(data: Any, path: str | Path) -> None:
    """Pretty, key-sorted JSON, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, fix: str) -> Any:
    """A JSON file another stage wrote; missing or corrupt is a DataError ending in ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise DataError(f"{path}: unreadable ({reason}); {fix}") from None
