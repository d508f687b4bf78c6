"""Forward passes outside training run in batches bounded by pixels
(convvae.data.images.images_per_batch), so memory does not grow with the number of images: with
the bound set to three 28x28 images, every use and the trainer's validation loss give the
network at most three images at a time, and the uses return what one pass over all returns."""

import numpy as np
import pytest
import torch

import convvae.data.images as pixels
from convvae.data.images import images_per_batch
from convvae.model.vae import ConvVAE
from convvae.training.trainer import Trainer
from convvae.uses.compress import decode, encode
from convvae.uses.evaluation import reconstruct
from convvae.uses.impute import impute, make_mask, mean_fill
from tests.conftest import quick_train_config, tiny_model


def test_the_bound_keeps_small_images_at_512_and_cuts_large_ones():
    assert images_per_batch((1, 28, 28)) == 512 and images_per_batch((3, 64, 64)) == 512
    assert images_per_batch((3, 256, 256)) == pixels.FORWARD_BATCH_VALUES // (3 * 256 * 256)
    assert images_per_batch((3, 8192, 8192)) == 1


@pytest.fixture
def batches_seen(monkeypatch) -> list[int]:
    """The images in each call of the network's encoder or decoder, after the bound is set to
    three 28x28 images."""
    monkeypatch.setattr(pixels, "FORWARD_BATCH_VALUES", 3 * 28 * 28)
    seen: list[int] = []
    for name in ("encode", "decode"):
        original = getattr(ConvVAE, name)

        def recording(self, x, _original=original):
            seen.append(len(x))
            return _original(self, x)

        monkeypatch.setattr(ConvVAE, name, recording)
    return seen


def outputs_of_uses(model, images, missing, fill) -> dict[str, torch.Tensor]:
    codes = encode(model, images, "float32")
    return {
        "reconstruct": reconstruct(model, images),
        "impute": impute(model, images, missing, fill, 3),
        "codes": torch.from_numpy(codes.values),
        "decode": decode(model, codes),
    }


@pytest.fixture
def one_pass(trained, mnist_slice):
    """Ten test digits, and each use's output computed with the default bound (one batch)."""
    images = torch.from_numpy(mnist_slice.test.images[:10])
    missing = make_mask("center", len(images), (1, 28, 28))
    fill = mean_fill(torch.from_numpy(mnist_slice.train.images))
    return images, missing, fill, outputs_of_uses(trained, images, missing, fill)


def test_uses_run_in_bounded_batches_with_the_same_results(trained, one_pass, batches_seen):
    images, missing, fill, expected = one_pass
    batched = outputs_of_uses(trained, images, missing, fill)
    assert batches_seen and max(batches_seen) == 3 and sum(batches_seen) > 4 * len(images)
    for use, output in batched.items():
        torch.testing.assert_close(output, expected[use], rtol=1e-5, atol=1e-6, msg=use)


def test_the_validation_loss_runs_in_bounded_batches(val_images, batches_seen):
    trainer = Trainer(tiny_model(), quick_train_config(), progress=False)
    recon, kl = trainer.evaluate_loss(val_images[:10])
    assert batches_seen and max(batches_seen) == 3 and np.isfinite([recon, kl]).all()
