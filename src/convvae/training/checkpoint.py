"""Training checkpoints: the whole state of an interrupted run, written atomically, and how a
``Trainer`` saves and resumes it.

A checkpoint records the inputs it was made for (its ``config`` fingerprint); one made for other
inputs is not resumed. A file that torch cannot read is a CheckpointError that says to delete it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from convvae.errors import CheckpointError
from convvae.runtime.files import save_torch_file
from convvae.training.history import EpochRecord

if TYPE_CHECKING:
    from convvae.training.trainer import Trainer

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` (tensors, dicts, numbers) to ``path`` in one rename."""
    save_torch_file({"format": CHECKPOINT_FORMAT, **state}, path)


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


def config_fingerprint(trainer: Trainer) -> dict:
    """What a checkpoint must have been made for to be resumed: train params but the device
    (and the epoch count where no schedule depends on it), beta, and the trainer's fingerprint."""
    train = dataclasses.asdict(trainer.cfg)
    # More epochs continue the same trajectory, except where the LR schedule depends on them.
    if trainer.cfg.lr_schedule == "none":
        train["epochs"] = None
    train["device"] = None
    return {"train": train, "beta": trainer.beta, **trainer.fingerprint}


def save_training_state(trainer: Trainer) -> None:
    """Checkpoint the trainer's whole state (main process only; nothing without a path)."""
    if trainer.checkpoint_path is None or not trainer.group.is_main:
        return
    state = {
        "config": config_fingerprint(trainer),
        "model": trainer.model.state_dict(),
        "best_model": trainer.best_state,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler else None,
        "history": [dataclasses.asdict(r) for r in trainer.history],
        "best_val_loss": trainer.best_val_loss,
        "best_epoch": trainer.best_epoch,
        "epochs_without_improvement": trainer.epochs_without_improvement,
        "rng": {
            "torch": torch.get_rng_state(),
            "shuffle": trainer.shuffle_generator.get_state(),
            "noise": trainer.noise_generator.get_state(),
        },
    }
    save_checkpoint(state, trainer.checkpoint_path)


def resume_training_state(trainer: Trainer) -> int | None:
    """Restore state from the checkpoint, if one exists; returns the epoch resumed after."""
    state = load_checkpoint(trainer.checkpoint_path, trainer.device)
    if state is None:
        return None
    changed = changed_keys(state["config"], config_fingerprint(trainer))
    if changed:
        trainer.log(
            f"{trainer.checkpoint_path}: made for other inputs ({', '.join(changed)}); "
            "training afresh"
        )
        return None
    # More epochs extend the run (epochs is not in the fingerprint); fewer than the
    # checkpoint already holds would end elsewhere than an uninterrupted run.
    if len(state["history"]) > trainer.cfg.epochs:
        trainer.log(
            f"{trainer.checkpoint_path}: holds {len(state['history'])} epochs, more than "
            f"train.epochs ({trainer.cfg.epochs}); training afresh"
        )
        return None
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError:
        raise CheckpointError(
            f"{trainer.checkpoint_path}: checkpoint weights do not fit the model in "
            "params.yaml; delete it to start afresh"
        ) from None
    _restore(trainer, state)
    return len(trainer.history)


def _restore(trainer: Trainer, state: dict[str, Any]) -> None:
    trainer.optimizer.load_state_dict(state["optimizer"])
    # Adam's moments come back in the layout they were saved in; a run resumed on another
    # device can hold its weights in the other layout (prefers_channels_last), and fused
    # Adam would then pair up the wrong elements. Each moment takes its weight's layout.
    for param, moments in trainer.optimizer.state.items():
        for key, value in moments.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                moments[key] = torch.empty_like(param).copy_(value)
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.best_state = state["best_model"]
    trainer.history = [EpochRecord(**r) for r in state["history"]]
    trainer.best_val_loss = state["best_val_loss"]
    trainer.best_epoch = state["best_epoch"]
    trainer.epochs_without_improvement = state["epochs_without_improvement"]
    torch.set_rng_state(state["rng"]["torch"].cpu())
    trainer.shuffle_generator.set_state(state["rng"]["shuffle"].cpu())
    try:
        trainer.noise_generator.set_state(state["rng"]["noise"].cpu())
    except RuntimeError:  # a CPU and a CUDA generator's states do not convert
        trainer.noise_generator.manual_seed(trainer.cfg.seed + 1 + len(trainer.history))
        trainer.log(
            f"{trainer.checkpoint_path}: saved on another kind of device; resuming with fresh "
            "posterior noise, so the run will not match an uninterrupted one exactly"
        )
