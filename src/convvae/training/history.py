"""A training run's history (a record per epoch), its result, and what the train stage writes
of them (metrics/train.json, the loss curve)."""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from convvae.model.vae import ConvVAE, count_parameters
from convvae.runtime.files import atomic_path


@dataclass(frozen=True)
class EpochRecord:
    """Mean per-image losses (nats) of one epoch; ``beta`` is the KL weight used in training."""

    epoch: int
    train_loss: float
    train_recon: float
    train_kl: float
    val_loss: float
    val_recon: float
    val_kl: float
    beta: float
    lr: float
    images_per_s: float
    seconds: float


@dataclass
class TrainResult:
    """The best model (by validation loss) and the history that led to it."""

    model: ConvVAE
    history: list[EpochRecord]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_from_epoch: int | None


def training_metrics(result: TrainResult) -> dict[str, float | int | bool]:
    """metrics/train.json: the best epoch, whether early stopping fired, size and speed."""
    return {
        "best_val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "parameters": count_parameters(result.model),
        "images_per_s": sum(r.images_per_s for r in result.history) / len(result.history),
        "train_seconds": sum(r.seconds for r in result.history),
    }


def save_loss_curve(history: list[EpochRecord], path: Path) -> None:
    """One CSV row per epoch, for `dvc plots show` (x: epoch, y: train_loss and val_loss)."""
    fields = [f.name for f in dataclasses.fields(EpochRecord)]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in history)
