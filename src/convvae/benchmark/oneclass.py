"""The one-class protocol for one normal class c: train on class c only, score every test image.

Trains ``benchmark.seeds`` ConvVAEs (the ``train`` section with ``benchmark.train``'s overrides)
on the training images of class c, scores every test image (class c normal, all others
anomalous) and the calibration half of the class's validation images with every score, and
sets each score's threshold on those calibration images (never on test images or labels). The
peers and the ablations (``convvae.benchmark.ablations``) run on the same images, and their
intervals resample the same test images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from convvae.anomaly.calibration import cross_fitted, plan_calibration
from convvae.anomaly.fit import train_and_fit
from convvae.anomaly.reference import Reference, save_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import MAP_SCORES, SCORES, ScoreSpec
from convvae.anomaly.scoring import every_score, score_and_map
from convvae.anomaly.thresholds import (
    ThresholdRecord,
    conformal_threshold,
    make_record,
    map_scale_of,
)
from convvae.benchmark.ablations import untrained_scorer
from convvae.benchmark.peers import run_peer
from convvae.config import Params
from convvae.data.sources import LabelledImages
from convvae.data.splits import Splits, selection_and_calibration
from convvae.errors import DataError
from convvae.metrics.detection import detection_metrics, roc_points
from convvae.metrics.stats import AucDifference, roc_auc_replicates
from convvae.model.vae import ConvVAE
from convvae.runtime.files import ClassFiles, atomic_path, write_json


@dataclass(frozen=True)
class ClassResult:
    """One class's benchmark: metrics (JSON-ready), the seed-0 model with its reference and
    threshold record, the ROC curve of the primary score (seed 0), and the bootstrap replicates
    behind every interval (the report averages them over classes)."""

    metrics: dict
    model: ConvVAE
    reference: Reference
    record: ThresholdRecord
    roc: list[dict[str, float]]
    auc_replicates: dict[str, np.ndarray]  # method -> its ROC-AUC's bootstrap replicates

    def save(self, files: ClassFiles) -> None:
        """Write the model, threshold record, ROC rows, replicates and metrics, atomically."""
        save_fitted_model(self.model, self.reference, files.model)
        write_json(self.record.as_json(), files.threshold)
        write_json(self.roc, files.roc)
        with atomic_path(files.replicates) as tmp, tmp.open("wb") as handle:
            np.savez_compressed(handle, **self.auc_replicates)
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
    calibration: str  # split | cross_fit
    calibration_images: int
    map_scale: float  # the 99.9th percentile of held-out normal images' maps


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
    # The images beside a features-only reference: the table's cosine_knn compares pixels.
    scorer = Scorer(fitted.training.model, fitted.reference.with_images(train_normal), spec)
    names = _benchmark_scores(spec)
    on_test = every_score(scorer, test_images, names, progress=True)
    plan = plan_calibration(params.anomaly, len(val_normal), len(train_normal) + len(val_normal))
    if plan.method == "split":
        _, calibration = selection_and_calibration(val_normal)
        on_calibration, maps = score_and_map(scorer, calibration, names)
        map_scale = map_scale_of(maps)
    else:  # every normal image, each scored by a fold model trained without it
        normal = np.concatenate([train_normal, val_normal])
        recipe = (params.model, train_cfg, params.anomaly)
        fraction = params.data.val_fraction
        on_calibration, map_scale = cross_fitted(
            recipe, normal, spec, names, fraction, _no_epoch_lines
        )
    return _SeedRun(
        fitted.training.model,
        fitted.reference,
        len(fitted.training.history),
        on_test,
        on_calibration,
        trained - started,
        time.perf_counter() - trained,
        len(test_images) + plan.images,
        plan.method,
        plan.images,
        map_scale,
    )


def _benchmark_scores(spec: ScoreSpec) -> tuple[str, ...]:
    """Every score of the table, and a map score when it is the primary one."""
    return (*SCORES, *(name for name in MAP_SCORES if name == spec.name))


@dataclass(frozen=True)
class _PeerRun:
    test_scores: np.ndarray  # (N, seeds)
    thresholds: np.ndarray  # (seeds,)
    fit_seconds: float
    score_seconds: float


def run_peers(
    params: Params, train_normal: np.ndarray, val_normal: np.ndarray, test_images: np.ndarray
) -> dict[str, _PeerRun]:
    """The practitioner's detectors of ``benchmark.peers`` (PyOD, default settings) on the same
    images as ours, one fit per benchmark seed: test scores, thresholds set as ours (on the
    calibration half of the validation images), and fit and scoring seconds summed over seeds."""
    runs = {}
    _, calibration = selection_and_calibration(val_normal)
    sets = {"test": test_images, "calibration": calibration}
    for name in params.benchmark.peers:
        found = [run_peer(name, train_normal, sets, seed) for seed in range(params.benchmark.seeds)]
        runs[name] = _PeerRun(
            np.stack([peer.scores["test"] for peer in found], axis=1),
            np.array(
                [
                    conformal_threshold(p.scores["calibration"], params.anomaly.target_fpr)
                    for p in found
                ]
            ),
            sum(peer.fit_seconds for peer in found),
            sum(peer.score_seconds for peer in found),
        )
    return runs


def run_ablations(
    params: Params, train_normal: np.ndarray, val_normal: np.ndarray, test_images: np.ndarray
) -> dict[str, _PeerRun]:
    """``untrained_encoder``: the default score by the network as initialised with each
    benchmark seed, its reference fitted as ours is (training images, selection half) and its
    threshold set on the calibration half, like the peers'."""
    spec = ScoreSpec.from_config(params.anomaly)
    selection, calibration = selection_and_calibration(val_normal)
    test, thresholds, fit_seconds, score_seconds = [], [], 0.0, 0.0
    for seed in range(params.benchmark.seeds):
        started = time.perf_counter()
        initial_seed = params.benchmark_train(seed).seed
        scorer = untrained_scorer(
            params.model, params.anomaly, train_normal, selection, spec, initial_seed
        )
        fitted = time.perf_counter()
        test.append(every_score(scorer, test_images, (spec.name,))[spec.name])
        on_calibration = every_score(scorer, calibration, (spec.name,))[spec.name]
        thresholds.append(conformal_threshold(on_calibration, params.anomaly.target_fpr))
        fit_seconds += fitted - started
        score_seconds += time.perf_counter() - fitted
    return {
        "untrained_encoder": _PeerRun(
            np.stack(test, axis=1), np.array(thresholds), fit_seconds, score_seconds
        )
    }


def run_class(params: Params, splits: Splits, normal_class: int, class_name: str) -> ClassResult:
    """Train, score and measure the one-class task of ``normal_class``; prints one line per
    seed. Detection metrics are the mean over seeds (see ``detection_metrics``); every method's
    difference from the default score has a paired bootstrap interval."""
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
    peers = run_peers(params, train_normal, val_normal, test.images)
    ablations = run_ablations(params, train_normal, val_normal, test.images)
    measured = _Measured.of(params, labels, runs, thresholds, peers | ablations, normal_class)
    metrics = {
        "normal_class": normal_class,
        "class_name": class_name,
        "data_source": params.data.source,
        "train_images": len(train_normal),
        "val_normal_images": len(val_normal),  # half select the epoch, half calibrate
        "test_images": len(labels),
        "test_anomalous": int(labels.sum()),
        **_run_metrics(runs, measured),
        "peers": measured.peer_metrics(peers),
        "ablations": measured.peer_metrics(ablations),
        "calibration": {"method": runs[0].calibration, "images": runs[0].calibration_images},
        "default_score": spec.name,  # what the differences are measured from
        "differences": measured.differences(spec.name),
    }
    record = make_record(
        spec,
        runs[0].calibration_scores[spec.name],
        target,
        normal_class=normal_class,
        class_name=class_name,
        data_source=params.data.source,
        thresholds={name: values[0] for name, values in thresholds.items()},
        calibration=runs[0].calibration,
        map_scale=runs[0].map_scale,
    )
    roc = roc_points(labels, runs[0].test_scores[spec.name])
    model, reference = runs[0].model, runs[0].reference
    return ClassResult(metrics, model, reference, record, roc, measured.replicates)


@dataclass(frozen=True)
class _Measured:
    """Every method's detection metrics on the class's test images (ours and the peers), and
    the bootstrap replicates of its ROC-AUC: drawn once, with the class's seed, so that the
    same resamples serve every method's interval and every paired difference."""

    metrics: dict[str, dict]
    replicates: dict[str, np.ndarray]

    @classmethod
    def of(cls, params, labels, runs, thresholds, peers, normal_class) -> _Measured:
        scores = {n: np.stack([run.test_scores[n] for run in runs], axis=1) for n in thresholds}
        cuts = {name: np.array(values) for name, values in thresholds.items()}
        scores |= {name: peer.test_scores for name, peer in peers.items()}
        cuts |= {name: peer.thresholds for name, peer in peers.items()}
        resamples = params.benchmark.bootstrap_resamples
        replicates = {
            name: roc_auc_replicates(labels, values, resamples, seed=normal_class)
            for name, values in scores.items()
        }
        metrics = {
            name: detection_metrics(
                labels, values, cuts[name], resamples, normal_class, auc_replicates=replicates[name]
            )  # fmt: skip
            for name, values in scores.items()
        }
        return cls(metrics, replicates)

    def peer_metrics(self, peers: dict[str, _PeerRun]) -> dict[str, dict]:
        """The peers' (or ablations') metrics with their fit and scoring seconds; one line each
        printed."""
        found = {}
        for name, peer in peers.items():
            seconds = peer.fit_seconds + peer.score_seconds
            found[name] = {**self.metrics[name], "fit_seconds": peer.fit_seconds,
                           "score_seconds": peer.score_seconds, "seconds": seconds}  # fmt: skip
            print(f"  {name}: ROC-AUC {found[name]['roc_auc']:.3f} in {seconds:.1f} s")
        return found

    def differences(self, default: str) -> dict[str, dict[str, float]]:
        """The default score's ROC-AUC minus every other method's, with a paired interval."""
        ours = self.metrics[default]["roc_auc"]
        return {
            name: AucDifference.of(
                ours - metric["roc_auc"], self.replicates[default] - self.replicates[name]
            ).as_dict()
            for name, metric in self.metrics.items()
            if name != default
        }


def _run_metrics(runs: list[_SeedRun], measured: _Measured) -> dict:
    """Seeds, epochs, seconds and our scores' detection metrics (mean over seeds)."""
    seconds_scoring = sum(run.score_seconds for run in runs)
    seconds_ours = sum(run.train_seconds for run in runs) + seconds_scoring
    per_score = {
        # every score comes from the same training and pass
        name: {**measured.metrics[name], "seconds": seconds_ours}
        for name in runs[0].test_scores
    }
    return {
        "seeds": len(runs),
        "epochs_run_mean": float(np.mean([run.epochs for run in runs])),
        "train_seconds": sum(run.train_seconds for run in runs),
        "score_images_per_s": sum(run.images_scored for run in runs) / seconds_scoring,
        "scores": per_score,
    }
