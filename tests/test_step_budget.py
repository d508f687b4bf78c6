"""train.min_steps: a small training set gets the epochs that make at least that many steps."""

import pytest
import torch

from convvae.config import parse_params
from convvae.training.recipe import train_vae, with_step_budget
from tests.conftest import quick_train_config


@pytest.mark.parametrize(
    ("images", "epochs"),
    [
        (350, 199),  # an mnist-5k class: 6 steps an epoch at batch 64
        (5400, 14),  # a Fashion-MNIST class: 85 steps an epoch, 14 epochs make the 1,190
        (5400 - 64, 15),  # 84 steps an epoch: 14 epochs would make 1,176
        (64 * 100, 14),  # 100 steps an epoch: 12 epochs would do, the 14 asked stay
    ],
)
def test_the_step_budget_raises_the_epochs_of_small_sets_only(images, epochs) -> None:
    cfg = quick_train_config(epochs=14, batch_size=64, min_steps=1190)
    assert with_step_budget(cfg, images).epochs == epochs


def test_without_a_step_budget_the_epochs_are_as_asked() -> None:
    cfg = quick_train_config(epochs=14, batch_size=64)
    assert with_step_budget(cfg, 10) is cfg


def test_a_small_set_trains_for_the_steps_it_was_given(mnist_slice) -> None:
    """96 real digits at batch 32 are 3 steps an epoch: min_steps 7 trains 3 epochs, not 1."""
    images = torch.from_numpy(mnist_slice.train.images[:96])
    val = torch.from_numpy(mnist_slice.val.images[:32])
    cfg = quick_train_config(epochs=1, batch_size=32, min_steps=7)
    result = train_vae(parse_params({}).model, cfg, images, val, log=lambda line: None)
    assert len(result.history) == 3
    # Each epoch still trains: the loss of the last is below the first's.
    assert result.history[-1].train_loss < result.history[0].train_loss
