"""The one-class protocol for one normal class c: train on class c only, score every test image.

Trains ``benchmark.seeds`` ConvVAEs (the ``train`` section with ``benchmark.train``'s overrides)
on the training images of class c, scores every test image (class c normal, all others
anomalous) and the calibration half of the class's validation images with every score, and
sets each score's threshold on those calibration images (never on test images or labels). The
peers run on the same images, and their intervals resample the same test images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.reference import Reference, save_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import MAP_SCORES, SCORES, ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.anomaly.thresholds import ThresholdRecord, conformal_threshold, make_record
from convvae.benchmark.peers import run_peer
from convvae.config import Params
from convvae.data.sources import LabelledImages
from convvae.data.splits import Splits, selection_and_calibration
from convvae.errors import DataError
from convvae.metrics.detection import detection_metrics, roc_points
from convvae.model.vae import ConvVAE
from convvae.runtime.files import write_json


@dataclass(frozen=True)
class ClassFiles:
    """Where one class of the one-class benchmark writes its results (a DVC stage's outputs)."""

    model: Path
    threshold: Path  # beside the model: convvae.anomaly.detector.THRESHOLD_FILE
    metrics: Path
    roc: Path


@dataclass(frozen=True)
class ClassResult:
    """One class's benchmark: metrics (JSON-ready), the seed-0 model with its reference and
    threshold record, and the ROC curve of the primary score (seed 0)."""

    metrics: dict
    model: ConvVAE
    reference: Reference
    record: ThresholdRecord
    roc: list[dict[str, float]]

    def save(self, files: ClassFiles) -> None:
        """Write the model, threshold record, ROC rows and metrics, each atomically."""
        save_fitted_model(self.model, self.reference, files.model)
        write_json(self.record.as_json(), files.threshold)
        write_json(self.roc, files.roc)
        write_json(self.metrics, files.metrics)


# Why a folder source has no one-class benchmark (its stages still write their outputs).
NO_CLASSES = (
    "data.source is folder: its images have no class labels, so the one-class benchmark has "
    "nothing to run; the evaluate stage measures defects (metrics/defects.json)"
)


def write_skipped_class(files: ClassFiles) -> None:
    """A benchmark stage's outputs when it has nothing to run (a folder source): an empty model
    folder, the reason as its metrics, no ROC points."""
    files.model.parent.mkdir(parents=True, exist_ok=True)
    write_json({"skipped": NO_CLASSES}, files.metrics)
    write_json([], files.roc)


def class_images(part: LabelledImages, normal_class: int, split: str) -> np.ndarray:
    """The images of ``normal_class`` in one split; none is a DataError."""
    images = part.images[part.labels == normal_class]
    if len(images) == 0:
        raise DataError(
            f"no {split} images of class {normal_class} in the prepared splits; remove it from "
            "benchmark.classes or raise data.max_train_images"
        )
    return images


@dataclass(frozen=True)
class _SeedRun:
    model: ConvVAE
    reference: Reference
    epochs: int
    test_scores: dict[str, np.ndarray]
    calibration_scores: dict[str, np.ndarray]
    train_seconds: float
    score_seconds: float
    images_scored: int  # test and calibration images


def _no_epoch_lines(line: str) -> None:
    """The benchmark's training log: its only lines are the per-epoch ones."""


def _train_and_score(
    params: Params,
    train_normal: np.ndarray,
    val_normal: np.ndarray,
    test_images: np.ndarray,
    seed: int,
) -> _SeedRun:
    """One model on the normal class (early stopping and the fused statistics on the selection
    half of its validation images), then every score of the test images and of the
    calibration half."""
    started = time.perf_counter()
    train_cfg = params.benchmark_train(seed)
    fitted = train_and_fit(
        params.model, train_cfg, params.anomaly, train_normal, val_normal, log=_no_epoch_lines
    )
    trained = time.perf_counter()
    # The stored record's noise (anomaly.noise_seed), so `convvae score` reproduces these scores;
    # the benchmark seed varies the training only.
    spec = ScoreSpec.from_config(params.anomaly)
    scorer = Scorer(fitted.training.model, fitted.reference, spec)
    names = _benchmark_scores(spec)
    _, calibration = selection_and_calibration(val_normal)
    on_test = every_score(scorer, test_images, names, progress=True)
    on_calibration = every_score(scorer, calibration, names)
    return _SeedRun(
        fitted.training.model,
        fitted.reference,
        len(fitted.training.history),
        on_test,
        on_calibration,
        trained - started,
        time.perf_counter() - trained,
        len(test_images) + len(calibration),
    )


def _benchmark_scores(spec: ScoreSpec) -> tuple[str, ...]:
    """Every score of the table, and a map score when it is the primary one."""
    return (*SCORES, *(name for name in MAP_SCORES if name == spec.name))


def run_peers(
    params: Params,
    train_normal: np.ndarray,
    val_normal: np.ndarray,
    test_images: np.ndarray,
    labels: np.ndarray,
    bootstrap_seed: int,
) -> dict[str, dict]:
    """The practitioner's detectors of ``benchmark.peers`` (PyOD, default settings) on the same
    images as ours, one fit per benchmark seed: detection metrics as ours (threshold on the
    calibration half of the validation images), plus fit and scoring seconds summed over seeds."""
    results = {}
    _, calibration = selection_and_calibration(val_normal)
    sets = {"test": test_images, "calibration": calibration}
    for name in params.benchmark.peers:
        test_scores, thresholds, fit_seconds, score_seconds = [], [], 0.0, 0.0
        for seed in range(params.benchmark.seeds):
            peer = run_peer(name, train_normal, sets, seed)
            test_scores.append(peer.scores["test"])
            target = params.anomaly.target_fpr
            thresholds.append(conformal_threshold(peer.scores["calibration"], target))
            fit_seconds += peer.fit_seconds
            score_seconds += peer.score_seconds
        metrics = detection_metrics(
            labels,
            np.stack(test_scores, axis=1),
            np.array(thresholds),
            params.benchmark.bootstrap_resamples,
            seed=bootstrap_seed,  # the resamples of our scores: paired intervals
        )
        metrics.update(
            fit_seconds=fit_seconds,
            score_seconds=score_seconds,
            seconds=fit_seconds + score_seconds,
        )
        results[name] = metrics
        print(f"  {name}: ROC-AUC {metrics['roc_auc']:.3f} in {metrics['seconds']:.1f} s")
    return results


def run_class(params: Params, splits: Splits, normal_class: int, class_name: str) -> ClassResult:
    """Train, score and measure the one-class task of ``normal_class``; prints one line per
    seed. Detection metrics are the mean over seeds (see ``detection_metrics``)."""
    spec = ScoreSpec.from_config(params.anomaly)
    train_normal = class_images(splits.train, normal_class, "training")
    val_normal = class_images(splits.val, normal_class, "validation")
    test = splits.test
    labels = (test.labels != normal_class).astype(np.int64)  # 1 = anomalous
    if labels.all() or not labels.any():
        raise DataError(
            f"the test split needs normal and anomalous images of class {normal_class}; "
            "raise data.max_train_images"
        )
    runs = []
    for seed in range(params.benchmark.seeds):
        run = _train_and_score(params, train_normal, val_normal, test.images, seed)
        runs.append(run)
        print(
            f"class {normal_class} ({class_name}), seed {seed}: {run.epochs} epochs, trained in "
            f"{run.train_seconds:.1f} s, scored {run.images_scored} images in "
            f"{run.score_seconds:.1f} s"
        )
    target = params.anomaly.target_fpr
    thresholds = {
        name: [conformal_threshold(run.calibration_scores[name], target) for run in runs]
        for name in _benchmark_scores(spec)
    }
    metrics = {
        "normal_class": normal_class,
        "class_name": class_name,
        "data_source": params.data.source,
        "train_images": len(train_normal),
        "val_normal_images": len(val_normal),  # half select the epoch, half calibrate
        "test_images": len(labels),
        "test_anomalous": int(labels.sum()),
        **_run_metrics(params, runs, labels, thresholds, normal_class),
        "peers": run_peers(params, train_normal, val_normal, test.images, labels, normal_class),
    }
    record = make_record(
        spec,
        runs[0].calibration_scores[spec.name],
        target,
        normal_class=normal_class,
        class_name=class_name,
        data_source=params.data.source,
        thresholds={name: values[0] for name, values in thresholds.items()},
    )
    roc = roc_points(labels, runs[0].test_scores[spec.name])
    return ClassResult(metrics, runs[0].model, runs[0].reference, record, roc)


def _run_metrics(
    params: Params,
    runs: list[_SeedRun],
    labels: np.ndarray,
    thresholds: dict[str, list[float]],
    normal_class: int,
) -> dict:
    """Seeds, epochs, seconds and every score's detection metrics (mean over seeds)."""
    per_score = {
        name: detection_metrics(
            labels,
            np.stack([run.test_scores[name] for run in runs], axis=1),
            np.array(cuts),
            params.benchmark.bootstrap_resamples,
            seed=normal_class,
        )
        for name, cuts in thresholds.items()
    }
    seconds_scoring = sum(run.score_seconds for run in runs)
    seconds_ours = sum(run.train_seconds for run in runs) + seconds_scoring
    for metric in per_score.values():
        metric["seconds"] = seconds_ours  # every score comes from the same training and pass
    return {
        "seeds": len(runs),
        "epochs_run_mean": float(np.mean([run.epochs for run in runs])),
        "train_seconds": sum(run.train_seconds for run in runs),
        "score_images_per_s": sum(run.images_scored for run in runs) / seconds_scoring,
        "scores": per_score,
    }
