"""What each MLflow run of the pipeline records, on top of ``Tracker``.

- training (the train stage): one run per model, params, provenance, datasets, per-epoch series;
- evaluation (the evaluate stage): the same run gains test metrics, figures and the models, and
  the servable model is registered with its threshold;
- the one-class benchmark (the report stage): a parent run per benchmark (same params and data)
  holding the summary, and a nested run per class, continued when that class's results change
  and untouched otherwise.

Imports no MLflow itself: every MLflow call goes through ``convvae.tracking.tracker.Tracker``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from convvae.anomaly.thresholds import ThresholdRecord
from convvae.config import Params, TrackingConfig
from convvae.data.splits import PreparedData
from convvae.model.files import load_model
from convvae.model.vae import ConvVAE
from convvae.runtime.files import ClassFiles
from convvae.tracking.provenance import provenance_tags
from convvae.tracking.tracker import DatasetPart, Tracker, flatten
from convvae.training.history import TrainResult

BENCHMARK_KEY_TAG = "benchmark.key"
CLASS_DIGEST_TAG = "benchmark.class_sha256"  # of the class's metrics and threshold files
REGISTERED_TAG = "registered_version"
REGISTERED_DIGEST_TAG = "registered.class_sha256"  # the results that version was registered with


def registered_model_name(data_source: str) -> str:
    """One registered model per data source, e.g. convvae-mnist-5k."""
    return f"convvae-{data_source}"


def anomaly_model_name(data_source: str, normal_class: int) -> str:
    """Registered name of one class's anomaly model, e.g. convvae-anomaly-mnist-5k-class-3."""
    return f"convvae-anomaly-{data_source}-class-{normal_class}"


# On an evaluation logged apart from its training (evaluate's params changed since): that run.
TRAINING_RUN_TAG = "convvae.training_run"


def training_run_name(params: Params) -> str:
    """<source>-<preset>[-<dvc experiment>], the row name in the run table."""
    name = f"{params.data.source}-{params.model.preset}"
    return f"{name}-{os.environ['DVC_EXP_NAME']}" if os.environ.get("DVC_EXP_NAME") else name


def log_training(
    tracker: Tracker,
    params: Params,
    result: TrainResult,
    metrics: Mapping[str, float],
    data: PreparedData,
    artifacts: list[Path],
    previous_run: str | None = None,
    on_run_opened: Callable[[str], None] | None = None,
) -> str:
    """Log one model's training into a new run, or into ``previous_run`` (the interrupted
    attempt); ``on_run_opened`` gets the run id before anything is logged. Returns the id."""
    started = time.perf_counter()
    if previous_run is not None:
        # MLflow refuses a param changed on a run; one not in the checkpoint's fingerprint
        # (anomaly.samples, say) may have changed since the attempt: then a new run.
        changed = tracker.changed_params(previous_run, flatten(params.to_dict()))
        if changed:
            print(
                f"not continuing MLflow run {previous_run}: params changed since "
                f"({_first_few(changed)}); a new run"
            )
            previous_run = None
    with tracker.run(run_id=previous_run, run_name=training_run_name(params)) as run_id:
        if previous_run:
            print(f"continuing MLflow run {run_id} of the interrupted attempt")
        if on_run_opened is not None:
            on_run_opened(run_id)
        tracker.log_params(params.to_dict())
        # MLflow tag keys allow no '/'; the file name identifies the source file well enough.
        files = {path.rsplit("/", 1)[-1]: sha for path, sha in data.manifest["files"].items()}
        if "folder_sha256" in data.manifest:  # a user's folder: one digest, not a tag per file
            files = {"folder": data.manifest["folder_sha256"]}
        tracker.set_tags(
            {
                # This workspace (an experiment's temporary copy), not the store's repository.
                **provenance_tags(Path.cwd()),
                "data.source": params.data.source,
                "data.sha256": data.sha256,
                **{f"data.file.{name}": sha for name, sha in files.items()},
            }
        )
        splits = data.splits
        tracker.log_datasets(
            [
                DatasetPart("training", splits.train.images, splits.train.labels),
                DatasetPart("validation", splits.val.images, splits.val.labels),
                DatasetPart("test", splits.test.images, splits.test.labels),
            ],
            name=params.data.source,
            source=str(params.data.path) if params.data.source == "folder" else str(data.path),
            sha256=data.manifest.get("folder_sha256", data.sha256),
        )
        tracker.log_history([dataclasses.asdict(r) for r in result.history])
        tracker.log_metrics(metrics)
        tracker.log_artifacts(artifacts, "train")
    seconds = time.perf_counter() - started
    print(f"logged to MLflow run {run_id} ({tracker.shown_uri}) in {seconds:.1f} s")
    return run_id


def log_evaluation(
    tracker: Tracker,
    run_id: str,
    params: Params,
    metrics: Mapping[str, float],
    plots: Path,
    model: ConvVAE,
    model_file: Path,
    example_images: np.ndarray,
    record: ThresholdRecord,
    onnx_file: Path | None = None,
    model_card: Path | None = None,
) -> str | None:
    """Test metrics, the uses' metrics (flattened) and figures into the training run; log the
    model and register it (with its test metrics and threshold) unless registration is off; the
    model card is an artifact and the registered version's description.
    ``example_images``: float32 (2+, C, H, W) in [0, 1]. Returns the id of the run logged to.

    evaluate re-runs alone when only its own params changed (anomaly, evaluate): the training
    run's params would then not describe these metrics (and MLflow refuses to change a logged
    param), so such an evaluation goes to a new run that names the training run in its tags.
    """
    started = time.perf_counter()
    name = registered_model_name(params.data.source) if params.tracking.register_model else None
    training_run = run_id
    changed = tracker.changed_params(training_run, flatten(params.to_dict()))
    run_name = f"{training_run_name(params)}-evaluate" if changed else None
    with tracker.run(run_id=None if changed else training_run, run_name=run_name) as run_id:
        if changed:
            print(
                f"params changed since training ({_first_few(changed)}): logging to a new "
                f"MLflow run {run_id} (training run {training_run})"
            )
            tracker.log_params(params.to_dict())
            tracker.set_tags({TRAINING_RUN_TAG: training_run})
        else:
            print(f"logging to MLflow run {run_id} (opened by train)")
        tracker.log_metrics(flatten(metrics))
        tracker.log_artifacts([plots], "evaluate")
        if onnx_file is not None:  # the same score and map for runtimes without PyTorch
            tracker.log_artifacts([onnx_file], "onnx")
        if model_card is not None:
            tracker.log_artifacts([model_card])
        version = _register(tracker, name, run_id, metrics, model, model_file, example_images,
                            record)  # fmt: skip
    if version is not None and model_card is not None:
        tracker.registry.describe_version(name, version, model_card.read_text())
    print(f"logged to MLflow in {time.perf_counter() - started:.1f} s")
    if version is not None:
        print(f"registered {name} version {version}")
    return run_id


def _register(tracker, name, run_id, metrics, model, model_file, example_images, record):
    """Log the model and register it as a version of ``name`` (None: log only), tagged with
    its test metrics and threshold record; the new version, or None."""
    version_tags = {k: v for k, v in metrics.items() if k.startswith("test_")}
    # Readable in the registry UI without parsing the record: what the version flags, where.
    version_tags |= {
        "anomaly.score": record.spec.name,
        "anomaly.threshold_value": record.threshold,
        "anomaly.target_fpr": record.target_fpr,
    }
    record_json = record.as_json()
    tags = {**version_tags, "run_id": run_id}
    return tracker.log_model(model, model_file, example_images, name, tags, record_json)


def _first_few(names: list[str]) -> str:
    """The first three names, then "..." if there are more."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def benchmark_tracking(params: Params) -> TrackingConfig:
    """The tracking section with experiment ``<tracking.experiment>-anomaly``: the benchmark's
    runs (a parent and one per class) stay out of the table of training runs."""
    return dataclasses.replace(params.tracking, experiment=f"{params.tracking.experiment}-anomaly")


def benchmark_key(params: Params, data_sha256: str) -> str:
    """Identifies one benchmark (params and data, not which classes ran): its parent MLflow run."""
    identity = {
        "benchmark": _benchmark_identity(params),
        "model": dataclasses.asdict(params.model),
        "data": dataclasses.asdict(params.data),
        "data_sha256": data_sha256,
        "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _benchmark_identity(params: Params) -> dict:
    """What makes two benchmarks the same experiment: not which classes ran, nor registration."""
    bench = dataclasses.asdict(params.benchmark)
    del bench["classes"], bench["register_models"]
    return {
        **bench,
        "train": dataclasses.asdict(params.benchmark_train()),
        "anomaly": dataclasses.asdict(params.anomaly),
    }


def log_benchmark(
    tracker: Tracker,
    params: Params,
    per_class: dict[int, dict],
    summary: Mapping[str, float],
    class_files: Callable[[int], ClassFiles],
    report_files: list[Path],
    data: PreparedData,
) -> dict:
    """The parent run with the summary and report, a nested run per class; returns their ids."""
    tags = {**provenance_tags(Path.cwd()), "data.source": params.data.source}
    key = benchmark_key(params, data.sha256)
    parent = tracker.find_run(BENCHMARK_KEY_TAG, key) or tracker.create_finished_run(
        f"benchmark-{params.data.source}", {BENCHMARK_KEY_TAG: key, **tags}
    )
    logged = {}
    for run in reversed(tracker.child_runs(parent)):  # oldest first: the newest one wins
        logged[run.data.tags.get("normal_class")] = run
    example = data.splits.test.images[:2].astype(np.float32) / 255
    run_ids = {
        str(c): _log_class(
            tracker,
            params,
            parent,
            metrics,
            class_files(c),
            logged.get(str(c)),
            {**tags, "normal_class": str(c), "data.sha256": data.sha256},
            example,
        )
        for c, metrics in per_class.items()
    }
    with tracker.run(run_id=parent):
        tracker.log_metrics(summary)
        if "vae_free_best" in summary:  # a name, not a metric
            tracker.set_tags({"vae_free_best": summary["vae_free_best"]})
        tracker.log_artifacts(report_files, "benchmark")
    print(f"logged the benchmark summary to MLflow run {parent}")
    return {"mlflow_parent_run_id": parent, "mlflow_run_ids": run_ids}


def _log_class(tracker, params, parent, metrics, files, previous, tags, example) -> str:
    """One class's nested run: new, continued (its results changed, or the last logging or
    registration did not finish) or untouched; returns its id."""
    normal_class = metrics["normal_class"]
    digest = hashlib.sha256(files.metrics.read_bytes() + files.threshold.read_bytes()).hexdigest()
    register = params.benchmark.register_models
    old_tags = previous.data.tags if previous is not None else {}
    # The digest tags are set last, so a run whose logging failed half-way is logged again.
    logged = (
        previous is not None
        and previous.info.status == "FINISHED"
        and old_tags.get(CLASS_DIGEST_TAG) == digest
    )
    registered = old_tags.get(REGISTERED_DIGEST_TAG) == digest
    if logged and (registered or not register):
        return previous.info.run_id
    previous_id = previous.info.run_id if previous is not None else None
    with tracker.nested_run(parent, f"class-{normal_class}", previous_id) as run_id:
        if previous is None:
            tracker.log_params({"benchmark": _benchmark_identity(params)})
            tracker.log_params({"model": params.to_dict()["model"]})
        if not logged:
            tracker.set_tags(tags)
            scalars = {k: v for k, v in metrics.items() if k != "scores"}
            # our scores unprefixed (fused.roc_auc), then peers.*, ablations.*, differences.*
            beside = {k: metrics[k] for k in ("peers", "ablations", "differences") if k in metrics}
            tracker.log_metrics({**scalars, **flatten(metrics["scores"]), **flatten(beside)})
            tracker.log_artifacts([files.threshold, files.roc], "benchmark")
        if register and not registered:
            name = anomaly_model_name(params.data.source, normal_class)
            version = tracker.log_model(
                load_model(files.model),
                files.model,
                example,
                name,
                {"run_id": run_id},
                json.loads(files.threshold.read_text()),
            )
            print(f"registered {name} version {version}")
            tracker.set_tags({REGISTERED_TAG: version, REGISTERED_DIGEST_TAG: digest})
        tracker.set_tags({CLASS_DIGEST_TAG: digest})
    action = "continued" if previous is not None else "logged"
    print(f"class {normal_class}: {action} MLflow run {run_id}")
    return run_id
