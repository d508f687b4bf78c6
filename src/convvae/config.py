"""params.yaml → typed, validated dataclasses, parsed once at the edge.

Every section of params.yaml maps to one dataclass below. An unknown key, a value of the wrong
type or out of range is a ``ConfigError`` that names the key (``train.lr``) and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from convvae.errors import ConfigError
from convvae.runtime.uris import uri_secrets
from convvae.yamlconfig import build, read_yaml, size_pair

# The vocabularies of params.yaml, each listed once (modules take their names: typing.get_args).
DataSource = Literal["mnist-5k", "fashion-mnist", "mnist", "folder"]
Likelihood = Literal["bernoulli", "gaussian", "discretized_logistic"]
# model.likelihood: auto → this per data source (docs/your-own-images.md: how it was chosen).
DEFAULT_LIKELIHOOD: dict[str, Likelihood] = dict.fromkeys(
    ("mnist-5k", "fashion-mnist", "mnist", "folder"), "bernoulli"
)


@dataclass(frozen=True)
class DataConfig:
    """Which images to use and how to split them."""

    source: DataSource = "mnist-5k"
    # IDX sources: the folder with the four IDX files (None: the source's default location);
    # folder: one category in the MVTec AD layout (train/good, test/<defect>, ground_truth).
    path: str | None = None
    # folder only: resize every image to this (an int: square; [height, width]), then an
    # optional centre crop; null keeps the files' size (they must then agree).
    image_size: int | list[int] | None = None
    crop: int | list[int] | None = None
    # folder only: 1 (grey) or 3 (RGB); auto: 1 if every file is grey, else 3.
    channels: Literal["auto", 1, 3] = "auto"
    # Fraction of the training part held out for validation (early stopping).
    val_fraction: float = 0.1
    # Fraction held out for test, only for sources without an official test split (mnist-5k).
    test_fraction: float = 0.2
    # Cap on training images after the split (a quick slice for tests and smoke runs).
    max_train_images: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0 < self.val_fraction < 1, "data.val_fraction", "must be between 0 and 1")
        _check(0 < self.test_fraction < 1, "data.test_fraction", "must be between 0 and 1")
        _check(
            self.val_fraction + self.test_fraction < 1,
            "data.val_fraction",
            "plus data.test_fraction must be below 1",
        )
        _check_seed(self.seed, "data.seed")
        _check(
            self.max_train_images is None or self.max_train_images > 0,
            "data.max_train_images",
            "must be a positive integer or null",
        )
        for key in ("image_size", "crop"):
            size_pair(getattr(self, key), f"data.{key}", smallest=8)
            _check(
                getattr(self, key) is None or self.source == "folder",
                f"data.{key}",
                "applies to data.source: folder only (the other sources are 28x28); set it null",
            )
        _check(
            self.source != "folder" or self.path is not None,
            "data.path",
            "must name the image folder (train/good/, test/<defect>/) when data.source is folder",
        )
        _check(
            self.channels == "auto" or self.source == "folder",
            "data.channels",
            "applies to data.source: folder only; set it to auto",
        )

    def size_pair(self, key: str) -> tuple[int, int] | None:
        """data.image_size or data.crop as (height, width), or None."""
        return size_pair(getattr(self, key), f"data.{key}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture overrides on top of a preset (see ``convvae.model.architecture.PRESETS``)."""

    preset: Literal["default", "seed"] = "default"
    channels: list[int] | None = None
    kernel_size: int | None = None
    encoder_hidden: list[int] | None = None
    decoder_hidden: list[int] | None = None
    latent_dim: int | None = None
    # Weight on the KL term of the ELBO (beta-VAE); 1.0 is the true ELBO.
    beta: float = 1.0
    # p(x | z): auto → DEFAULT_LIKELIHOOD of data.source (resolved when params are read).
    likelihood: Literal["auto"] | Likelihood = "auto"
    # gaussian only: a learned standard deviation per pixel, or one per channel.
    variance: Literal["pixel", "shared"] = "pixel"

    def __post_init__(self) -> None:
        for key in ("channels", "encoder_hidden", "decoder_hidden"):
            widths = getattr(self, key)
            _check(
                widths is None or all(w > 0 for w in widths),
                f"model.{key}",
                "must be a list of positive integers or null",
            )
        _check(
            self.channels is None or len(self.channels) > 0, "model.channels", "must not be empty"
        )
        _check(
            self.kernel_size is None or self.kernel_size in (3, 4, 5),
            "model.kernel_size",
            "must be 3, 4 or 5",
        )
        _check(
            self.latent_dim is None or self.latent_dim > 0, "model.latent_dim", "must be positive"
        )
        _check(self.beta >= 0, "model.beta", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one model."""

    epochs: int = 20
    batch_size: int = 128
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: Literal["none", "cosine"] = "none"
    # Epochs over which the KL weight rises linearly from 0 to model.beta.
    kl_warmup_epochs: int = 0
    grad_clip_norm: float | None = None
    # Stop after this many epochs without a better validation loss; null never stops early.
    early_stopping_patience: int | None = 5
    # At least this many optimizer steps: a small training set gets more epochs (training.recipe).
    min_steps: int | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # Data-parallel training under torchrun (also on whenever torchrun starts 2+ processes).
    distributed: bool = False

    def __post_init__(self) -> None:
        _check_seed(self.seed, "train.seed")
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.batch_size >= 2, "train.batch_size", "must be >= 2")
        _check(0 < self.lr < 1, "train.lr", "must be between 0 and 1")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.kl_warmup_epochs >= 0, "train.kl_warmup_epochs", "must be >= 0")
        _check(
            self.grad_clip_norm is None or self.grad_clip_norm > 0,
            "train.grad_clip_norm",
            "must be positive or null",
        )
        _check(
            self.early_stopping_patience is None or self.early_stopping_patience >= 1,
            "train.early_stopping_patience",
            "must be >= 1 or null",
        )
        _check(
            self.min_steps is None or self.min_steps >= 1, "train.min_steps", "must be >= 1 or null"
        )


@dataclass(frozen=True)
class EvaluateConfig:
    """Held-out likelihood estimates and figures."""

    # Importance samples per image for the IWAE bound on log p(x).
    iwae_samples: int = 64
    # Images in the sample and reconstruction grids.
    grid_images: int = 64
    seed: int = 0
    # Epochs of the small CNN whose features the Fréchet distance of samples is measured in.
    classifier_epochs: int = 3
    # JPEG qualities on the rate-distortion curve, beside the latent codes and PNG.
    jpeg_qualities: list[int] = field(default_factory=lambda: [10, 25, 50, 75, 95])
    # Encode → decode rounds of the fixed-point imputation.
    imputation_iterations: int = 5

    def __post_init__(self) -> None:
        _check_seed(self.seed, "evaluate.seed")
        _check(self.iwae_samples >= 1, "evaluate.iwae_samples", "must be >= 1")
        _check(1 <= self.grid_images <= 1024, "evaluate.grid_images", "must be between 1 and 1024")
        _check(self.classifier_epochs >= 1, "evaluate.classifier_epochs", "must be >= 1")
        _check(
            len(self.jpeg_qualities) > 0 and all(1 <= q <= 95 for q in self.jpeg_qualities),
            "evaluate.jpeg_qualities",
            "must be a non-empty list of integers between 1 and 95",
        )
        _check(self.imputation_iterations >= 1, "evaluate.imputation_iterations", "must be >= 1")


_SECRETS_FIX = (
    "which DVC records in dvc.lock and every run uploads; leave tracking.uri null and set "
    "MLFLOW_TRACKING_URI in the environment (for an http server: MLFLOW_TRACKING_USERNAME and "
    "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN)"
)


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow records runs and models."""

    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI if set, else sqlite:///<repository root>/mlflow.db.
    uri: str | None = None
    experiment: str = "convvae"
    # Register each evaluated model as a version of convvae-<data.source>.
    register_model: bool = True
    # Seconds before an unreachable tracking server is reported (never minutes of retries).
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _check(bool(self.experiment.strip()), "tracking.experiment", "must not be empty")
        _check(1 <= self.timeout_s <= 30, "tracking.timeout_s", "must be between 1 and 30")
        secrets = " and ".join(uri_secrets(self.uri or ""))
        _check(not secrets, "tracking.uri", f"holds {secrets}, {_SECRETS_FIX}")


# Importance samples per image a score may draw (bounds stored threshold records too).
MAX_SAMPLES = 4096
Calibration = Literal["auto", "split", "cross_fit"]
AnomalyScore = Literal["recon_mse", "recon_nll_at_mean", "neg_elbo", "iwae_nll", "excess_nll",
                       "hidden_knn", "cosine_knn", "contrast_knn", "fused", "patch_knn",
                       "patch_knn_guarded", "patch_and_fused"]  # fmt: skip
# Score names that older params files, threshold records and model cards may hold -> today's.
RENAMED_SCORES = {"recon_bce": "recon_nll_at_mean"}
# anomaly.score: auto → this per data source (docs/anomaly-detection.md: how each was chosen).
DEFAULT_SCORE: dict[str, AnomalyScore] = {
    "mnist-5k": "fused",
    "fashion-mnist": "fused",
    "mnist": "fused",
    "folder": "patch_and_fused",
}


@dataclass(frozen=True)
class AnomalyConfig:
    """How every model scores images and where it cuts: read by evaluate, the benchmark, and
    stored with each model for `convvae score` and serving."""

    # The score that `convvae score` and serving threshold (higher = more anomalous); auto:
    # DEFAULT_SCORE of data.source, resolved when params are read.
    score: Literal["auto"] | AnomalyScore = "auto"
    # Importance samples per image for the IWAE bound and the k-sample negative ELBO: 8 scores
    # as well as 32 at a third of the cost (docs/benchmark/speed-selection, held-out images).
    samples: int = 8
    # Seed of the posterior noise shared by every image (scores do not depend on the batch).
    noise_seed: int = 0
    # The false-positive rate the threshold targets: the conformal quantile of the scores of
    # normal calibration images (held out from training and from early stopping).
    target_fpr: float = 0.05
    # Which normal images calibrate (convvae.anomaly.calibration): split (the half of the
    # validation images early stopping never sees), cross_fit (every normal image, each scored
    # by a model trained without it, in `folds` parts), auto (split where that half can reach
    # target_fpr, else cross_fit).
    calibration: Calibration = "auto"
    folds: int = 10
    # false: model files hold the features scoring needs, not the training images (no
    # cosine_knn score; docs/anomaly-detection.md#what-a-model-file-holds).
    store_images: bool = True

    def __post_init__(self) -> None:
        bound = f"must be between 1 and {MAX_SAMPLES}"
        _check(1 <= self.samples <= MAX_SAMPLES, "anomaly.samples", bound)
        _check_seed(self.noise_seed, "anomaly.noise_seed")
        _check(0 < self.target_fpr <= 0.5, "anomaly.target_fpr", "must be in (0, 0.5]")
        _check(2 <= self.folds <= 20, "anomaly.folds", "must be between 2 and 20")
        _check(
            self.store_images or self.score != "cosine_knn",
            "anomaly.store_images",
            "false leaves no cosine_knn score (it compares the images): choose another score",
        )


# The per-image likelihood losses `convvae promote` compares versions on (lower is better).
PromoteMetric = Literal["neg_elbo", "iwae_nll"]
PeerName = Literal["pyod_knn", "pyod_iforest", "pyod_autoencoder", "pyod_vae"]


@dataclass(frozen=True)
class BenchmarkConfig:
    """The one-class anomaly benchmark: one model per normal class, trained on that class only."""

    # The normal classes to run (one DVC matrix stage each); every class of the source by default.
    classes: list[int] = field(default_factory=lambda: list(range(10)))
    # Models per class, with train seeds train.seed + 0 .. seeds - 1; metrics are the mean.
    seeds: int = 1
    # Keys of the `train` section that differ for the class models; the rest is `train`'s.
    train: dict[str, Any] = field(default_factory=lambda: {"epochs": 14, "batch_size": 64})
    bootstrap_resamples: int = 1000
    # Detectors run beside ours on the same images (PyOD, default settings); [] runs none.
    peers: list[PeerName] = field(
        default_factory=lambda: ["pyod_knn", "pyod_iforest", "pyod_autoencoder", "pyod_vae"]
    )
    # Register each class's model as convvae-anomaly-<data.source>-class-<c> in MLflow.
    register_models: bool = False

    def __post_init__(self) -> None:
        _check(
            len(self.classes) > 0 and all(0 <= c <= 9 for c in self.classes),
            "benchmark.classes",
            "must be a non-empty list of class labels 0..9",
        )
        _check(len(set(self.classes)) == len(self.classes), "benchmark.classes", "has duplicates")
        _check(1 <= self.seeds <= 10, "benchmark.seeds", "must be between 1 and 10")
        _check(len(set(self.peers)) == len(self.peers), "benchmark.peers", "has duplicates")
        _check(
            self.bootstrap_resamples >= 100,
            "benchmark.bootstrap_resamples",
            "must be >= 100",
        )


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def __post_init__(self) -> None:
        self.benchmark_train()  # the overrides are validated with the rest of the file
        if self.anomaly.score == "auto":
            resolved = DEFAULT_SCORE[self.data.source]
            object.__setattr__(self, "anomaly", dataclasses.replace(self.anomaly, score=resolved))
        if self.model.likelihood == "auto":  # resolved once, so every log shows the real one
            resolved = DEFAULT_LIKELIHOOD[self.data.source]
            object.__setattr__(self, "model", dataclasses.replace(self.model, likelihood=resolved))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for logging and checkpoints)."""
        return dataclasses.asdict(self)

    def benchmark_train(self, seed_offset: int = 0) -> TrainConfig:
        """The class models' training: ``train`` with ``benchmark.train``'s keys replaced, every
        other key honoured; seed ``train.seed + seed_offset`` (one model per benchmark seed)."""
        merged = {**dataclasses.asdict(self.train), **self.benchmark.train}
        try:
            cfg = build(TrainConfig, merged, prefix="benchmark.train.")
        except ConfigError as err:  # TrainConfig's own checks name train.<key>
            message = str(err)
            if message.startswith("train."):
                message = "benchmark." + message
            raise ConfigError(message) from None
        return dataclasses.replace(cfg, seed=cfg.seed + seed_offset)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raises ConfigError naming the offending key."""
    path = Path(path)
    return parse_params(read_yaml(path), source=str(path))


def load_tracking(path: str | Path) -> TrackingConfig:
    """Only the tracking section of a params file (what a `models:/` reference needs): the
    rest of the file may belong to another version of the project."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    try:
        return build(TrackingConfig, raw.get("tracking") or {}, prefix="tracking.")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate a nested mapping (as read from YAML) into ``Params``."""
    try:
        anomaly = raw.get("anomaly") if isinstance(raw, dict) else None
        score = anomaly.get("score") if isinstance(anomaly, dict) else None
        if isinstance(score, str) and score in RENAMED_SCORES:
            raise ConfigError(
                f"anomaly.score {score} was renamed {RENAMED_SCORES[score]}; write that instead"
            )
        return build(Params, raw, prefix="")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _check_seed(seed: int, key: str) -> None:
    # scikit-learn and torch generators both accept 0 .. 2**32 - 1.
    _check(0 <= seed < 2**32, key, "must be between 0 and 4294967295")


def _check(condition: bool, key: str, requirement: str) -> None:
    if not condition:
        raise ConfigError(f"{key} {requirement}")
