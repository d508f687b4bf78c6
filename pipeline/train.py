"""DVC stage `train`: fit a ConvVAE on the prepared training split, keep the best by validation.

The MLflow run is opened (and the store checked) before training, filled after it, and its id
written to a small output that `evaluate` reads. The checkpoint is deleted only once the model is
saved and logged: an interrupted stage, or one whose tracking store was unreachable, resumes.
"""

import sys

from convvae.anomaly.calibration import plan_calibration, reachability_warning
from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.reference import save_fitted_model
from convvae.config import load_params
from convvae.data.splits import load_prepared
from convvae.errors import run_stage
from convvae.runtime.files import write_json
from convvae.tracking.runs import log_training
from convvae.tracking.tracker import open_tracker
from convvae.training.devices import init_distributed
from convvae.training.history import save_loss_curve, training_metrics
from pipeline import layout


def main() -> None:
    params = load_params(layout.PARAMS)
    group = init_distributed(params.train)  # one process per GPU or CPU worker under torchrun
    # Only rank 0 tracks and writes; a dead server fails here, before any training.
    tracker = open_tracker(params.tracking) if group.is_main else None
    data = load_prepared(layout.PREPARED_SPLITS, layout.MANIFEST)
    splits = data.splits
    plan = plan_calibration(params.anomaly, len(splits.val), len(splits.train) + len(splits.val))
    warning = reachability_warning(params.anomaly, plan, params.data.val_fraction)
    if warning and group.is_main:
        print(warning, file=sys.stderr)
    fitted = train_and_fit(
        params.model,
        params.train,
        params.anomaly,
        splits.train.images,
        splits.val.images,
        checkpoint_path=layout.TRAIN_CHECKPOINT,
        fingerprint={"data_sha256": data.sha256},
        group=group,
    )
    if not group.is_main:
        return
    result = fitted.training
    result.model.preprocessing = data.manifest.get("preprocessing")  # for score --resize
    save_fitted_model(result.model, fitted.reference, layout.MODEL)
    save_loss_curve(result.history, layout.LOSS_CURVE)
    metrics = training_metrics(result)
    if tracker is not None:
        metrics["mlflow_run_id"] = log_training(
            tracker,
            params,
            result,
            metrics,
            data,
            [layout.PARAMS, layout.LOSS_CURVE, layout.MANIFEST],
            previous_run=(
                _interrupted_run(tracker) if result.resumed_from_epoch is not None else None
            ),
            on_run_opened=layout.TRAIN_CHECKPOINT_RUN.write_text,
        )
    write_json(metrics, layout.TRAIN_METRICS)
    write_json(
        {"run_id": metrics.get("mlflow_run_id"), "tracking_uri": tracker and tracker.shown_uri},
        layout.MLFLOW_RUN,
    )
    layout.TRAIN_CHECKPOINT.unlink(missing_ok=True)
    layout.TRAIN_CHECKPOINT_RUN.unlink(missing_ok=True)
    print(f"best validation loss {result.best_val_loss:.2f} nats/image, epoch {result.best_epoch}")


def _interrupted_run(tracker) -> str | None:
    if not layout.TRAIN_CHECKPOINT_RUN.is_file():
        return None
    run_id = layout.TRAIN_CHECKPOINT_RUN.read_text().strip()
    return run_id if tracker.run_exists(run_id) else None


if __name__ == "__main__":
    run_stage(main)
