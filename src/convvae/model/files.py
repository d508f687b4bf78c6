"""Model files: a ConvVAE's weights, architecture and preprocessing record, written atomically
and read without unpickling code; other layers store what they fitted beside them (extras)."""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convvae.data.folder import MAX_IMAGE_PIXELS
from convvae.errors import CheckpointError
from convvae.model.architecture import Architecture, architecture_diff, architecture_from_dict
from convvae.model.vae import ConvVAE
from convvae.runtime.files import save_torch_file

MODEL_FILE_FORMAT = 1
_MODEL_KEYS = frozenset({"format", "architecture", "state_dict", "preprocessing"})


def save_model(model: ConvVAE, path: str | Path, extras: Mapping[str, Any] | None = None) -> None:
    """Write weights, architecture and ``extras`` (tensors, numbers and strings under names of
    their own: the anomaly layer's reference) atomically (temporary name, then rename)."""
    payload = {
        "format": MODEL_FILE_FORMAT,
        "architecture": dataclasses.asdict(model.arch),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if model.preprocessing is not None:
        payload["preprocessing"] = dict(model.preprocessing)
    clash = set(extras or {}) & _MODEL_KEYS
    if clash:
        raise ValueError(f"extras may not use the model file's own keys: {sorted(clash)}")
    payload.update(extras or {})
    save_torch_file(payload, path)


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds: the model, and the extras saved beside it by name."""

    model: ConvVAE
    extras: dict[str, Any]


def load_model(path: str | Path, expected: Architecture | None = None) -> ConvVAE:
    """The model of a model file written by ``save_model`` (``load_model_file``)."""
    return load_model_file(path, expected).model


def load_model_file(path: str | Path, expected: Architecture | None = None) -> ModelFile:
    """Load a model file written by ``save_model`` (``weights_only=True``: no pickled code).

    With ``expected``, a file whose architecture differs is a CheckpointError naming the field.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: model file not found; run the train stage (dvc repro train)"
        )
    _check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        arch = architecture_from_dict(payload["architecture"])
        state = payload["state_dict"]
    except Exception as err:  # torch raises many types for a corrupt file
        raise CheckpointError(
            f"{path}: not a convvae model file ({type(err).__name__}); re-run the train stage"
        ) from None
    _check_tensor_bytes(payload, path)
    _check_before_building(arch, state, payload.get("preprocessing"), path)
    if expected is not None and arch != expected:
        raise CheckpointError(
            f"{path}: model shape does not match the config: "
            f"{architecture_diff(arch, expected, 'config wants')}; "
            "retrain or restore the params it was trained with"
        )
    model = ConvVAE(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise CheckpointError(
            f"{path}: weights do not fit the stored architecture: {first}"
        ) from None
    model.preprocessing = payload.get("preprocessing")
    return ModelFile(model, {k: v for k, v in payload.items() if k not in _MODEL_KEYS})


def _check_before_building(arch: Architecture, state: Any, preprocessing: Any, path: Path) -> None:
    """An untrusted file's architecture is built without memory first (the meta device): it
    must hold exactly the stored weights, so the network can cost no more than the file does.
    Its preprocessing sizes (used by --resize) are bounded as image files are."""
    try:
        with torch.device("meta"):
            wanted = {k: tuple(v.shape) for k, v in ConvVAE(arch).state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
    except Exception as err:  # junk field types or values fail in many ways
        raise CheckpointError(
            f"{path}: not a convvae model file (architecture: {type(err).__name__}); re-run "
            "the train stage"
        ) from None
    if found != wanted:
        differ = sorted(k for k in wanted.keys() | found.keys() if wanted.get(k) != found.get(k))
        raise CheckpointError(
            f"{path}: weights do not fit the stored architecture ({len(differ)} tensors differ, "
            f"first {differ[0]}: stored {found.get(differ[0])}, needs {wanted.get(differ[0])}); "
            "re-run the train stage"
        )
    sizes = [(preprocessing or {}).get(key) for key in ("image_size", "crop")]
    for size in filter(None, sizes):
        if not (
            isinstance(size, list | tuple)
            and len(size) == 2
            and all(isinstance(side, int) and side >= 1 for side in size)
            and size[0] * size[1] <= MAX_IMAGE_PIXELS
        ):
            raise CheckpointError(
                f"{path}: stored preprocessing size {size!r} is not 1 to {MAX_IMAGE_PIXELS} "
                "pixels; re-run the train stage"
            )


def _check_archive(path: Path) -> None:
    """torch.save writes an uncompressed zip: a file whose entries are compressed, or hold more
    bytes than the file, would inflate inside torch.load (a 20 KB file holding 20 MB)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        raise CheckpointError(
            f"{path}: not a convvae model file (not torch.save's zip format); re-run the train "
            "stage"
        ) from None
    stored = all(entry.compress_type == zipfile.ZIP_STORED for entry in entries)
    if not stored or sum(entry.file_size for entry in entries) > path.stat().st_size:
        raise CheckpointError(
            f"{path}: compressed or inflating entries, which torch.save never writes; re-run "
            "the train stage"
        )


def _check_tensor_bytes(payload: Any, path: Path) -> None:
    """Every tensor must be backed by bytes in the file: a stride-0 view (one float expanded
    to 100000 x 3136 in a 1.5 KB file) loads as a full-size tensor."""
    total, pending = 0, [payload]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            pending += list(item.values())
        elif isinstance(item, list | tuple):
            pending += list(item)
    if total > path.stat().st_size:
        raise CheckpointError(
            f"{path}: its tensors hold {total} bytes but the file only {path.stat().st_size} "
            "(expanded views); not a file torch.save wrote from a model: re-run the train stage"
        )
