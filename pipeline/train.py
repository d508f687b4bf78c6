"""DVC stage `train`: fit a ConvVAE on the prepared training split, keep the best by validation.

The MLflow run is opened (and the store checked) before training, filled after it, and its id
written to a small output that `evaluate` reads. The checkpoint is deleted only once the model is
saved and logged: an interrupted stage, or one whose tracking store was unreachable, resumes.
"""

import csv
import dataclasses
import hashlib
import json
import os
import time

import torch

from convvae.cli import run_stage
from convvae.config import Params, load_params
from convvae.data import load_splits
from convvae.files import atomic_path, write_json
from convvae.model import ConvVAE, count_parameters, resolve_architecture, save_model
from convvae.tracking import DatasetPart, Tracker, open_tracker, provenance_tags
from convvae.train import EpochRecord, Trainer, TrainResult, init_distributed
from pipeline import layout


def main() -> None:
    params = load_params(layout.PARAMS)
    group = init_distributed(params.train)  # one process per GPU or CPU worker under torchrun
    # Only rank 0 tracks and writes; a dead server fails here, before any training.
    tracker = open_tracker(params.tracking) if group.is_main else None
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
        group=group,
    )
    if group.is_main:
        processes = f" x {group.world_size} processes" if group.world_size > 1 else ""
        print(f"training {count_parameters(model):,} parameters on {trainer.device}{processes}")
    result = trainer.fit(torch.from_numpy(splits.train.images), torch.from_numpy(splits.val.images))
    if not group.is_main:
        return
    save_model(result.model, layout.MODEL)
    write_loss_curve(result.history)
    metrics = {
        "best_val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "parameters": count_parameters(result.model),
        "images_per_s": sum(r.images_per_s for r in result.history) / len(result.history),
        "train_seconds": sum(r.seconds for r in result.history),
    }
    run_id = None
    if tracker is not None:
        run_id = log_training(tracker, params, result, metrics, splits, data_sha256)
        metrics["mlflow_run_id"] = run_id
    write_json(metrics, layout.TRAIN_METRICS)
    write_json({"run_id": run_id, "tracking_uri": tracker and tracker.uri}, layout.MLFLOW_RUN)
    layout.TRAIN_CHECKPOINT.unlink(missing_ok=True)
    layout.TRAIN_CHECKPOINT_RUN.unlink(missing_ok=True)
    print(f"best validation loss {result.best_val_loss:.2f} nats/image, epoch {result.best_epoch}")


def log_training(
    tracker: Tracker, params: Params, result: TrainResult, metrics: dict, splits, data_sha256: str
) -> str:
    """Log one model's training into a new run, or into the run of the interrupted attempt."""
    started = time.perf_counter()
    previous = _interrupted_run(tracker) if result.resumed_from_epoch is not None else None
    manifest = json.loads(layout.MANIFEST.read_text())
    run_name = f"{params.data.source}-{params.model.preset}"
    if os.environ.get("DVC_EXP_NAME"):
        run_name += f"-{os.environ['DVC_EXP_NAME']}"
    with tracker.run(run_id=previous, run_name=run_name) as run_id:
        if previous:
            print(f"continuing MLflow run {run_id} of the interrupted attempt")
        layout.TRAIN_CHECKPOINT_RUN.write_text(run_id)
        tracker.log_params(params.to_dict())
        tracker.set_tags(
            {
                **provenance_tags(tracker.root),
                "data.source": params.data.source,
                "data.sha256": data_sha256,
                **{f"data.file.{name}": sha for name, sha in _short_files(manifest).items()},
            }
        )
        tracker.log_datasets(
            [
                DatasetPart("training", splits.train.images, splits.train.labels),
                DatasetPart("validation", splits.val.images, splits.val.labels),
                DatasetPart("test", splits.test.images, splits.test.labels),
            ],
            name=params.data.source,
            source=str(layout.PREPARED_SPLITS),
            sha256=data_sha256,
        )
        tracker.log_history([dataclasses.asdict(r) for r in result.history])
        tracker.log_metrics(metrics)
        tracker.log_artifacts([layout.PARAMS, layout.LOSS_CURVE, layout.MANIFEST], "train")
    seconds = time.perf_counter() - started
    print(f"logged to MLflow run {run_id} ({tracker.uri}) in {seconds:.1f} s")
    return run_id


def _interrupted_run(tracker: Tracker) -> str | None:
    if not layout.TRAIN_CHECKPOINT_RUN.is_file():
        return None
    run_id = layout.TRAIN_CHECKPOINT_RUN.read_text().strip()
    return run_id if tracker.run_exists(run_id) else None


def _short_files(manifest: dict) -> dict[str, str]:
    # MLflow tag keys allow no '/'; the file name identifies the source file well enough.
    return {path.rsplit("/", 1)[-1]: sha for path, sha in manifest["files"].items()}


def write_loss_curve(history: list[EpochRecord]) -> None:
    """One row per epoch for `dvc plots show` (x: epoch, y: train_loss and val_loss)."""
    fields = [f.name for f in dataclasses.fields(EpochRecord)]
    with atomic_path(layout.LOSS_CURVE) as tmp, tmp.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in history)


if __name__ == "__main__":
    run_stage(main)
