"""DVC stage `train`: fit a ConvVAE on the prepared training split, keep the best by validation."""

import csv
import dataclasses
import hashlib

import torch

from convvae.cli import run_stage
from convvae.config import load_params
from convvae.data import load_splits
from convvae.files import atomic_path, write_json
from convvae.model import ConvVAE, count_parameters, resolve_architecture, save_model
from convvae.train import EpochRecord, Trainer
from pipeline import layout


def main() -> None:
    params = load_params(layout.PARAMS)
    splits = load_splits(layout.PREPARED_SPLITS)
    arch = resolve_architecture(params.model, splits.train.images.shape[1:])
    torch.manual_seed(params.train.seed)
    model = ConvVAE(arch)
    data_sha256 = hashlib.sha256(layout.PREPARED_SPLITS.read_bytes()).hexdigest()
    trainer = Trainer(
        model,
        params.train,
        beta=params.model.beta,
        checkpoint_path=layout.TRAIN_CHECKPOINT,
        fingerprint={"architecture": dataclasses.asdict(arch), "data_sha256": data_sha256},
    )
    print(f"training {count_parameters(model):,} parameters on {trainer.device}")
    result = trainer.fit(torch.from_numpy(splits.train.images), torch.from_numpy(splits.val.images))
    save_model(result.model, layout.MODEL)
    write_loss_curve(result.history)
    write_json(
        {
            "best_val_loss": result.best_val_loss,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "parameters": count_parameters(result.model),
            "images_per_s": sum(r.images_per_s for r in result.history) / len(result.history),
            "train_seconds": sum(r.seconds for r in result.history),
        },
        layout.TRAIN_METRICS,
    )
    print(f"best validation loss {result.best_val_loss:.2f} nats/image, epoch {result.best_epoch}")


def write_loss_curve(history: list[EpochRecord]) -> None:
    """One row per epoch for `dvc plots show` (x: epoch, y: train_loss and val_loss)."""
    fields = [f.name for f in dataclasses.fields(EpochRecord)]
    with atomic_path(layout.LOSS_CURVE) as tmp, tmp.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in history)


if __name__ == "__main__":
    run_stage(main)
