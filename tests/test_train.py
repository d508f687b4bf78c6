"""The trainer: learning, determinism, resume, early stopping, warm-up and divergence."""

import math

import pytest
import torch

from convvae.errors import CheckpointError, ConfigError, TrainingDivergedError
from convvae.training.devices import prefers_channels_last, select_device
from convvae.training.trainer import Trainer
from tests.conftest import quick_train_config, tiny_model


def fit(train_images, val_images, checkpoint=None, on_epoch=None, **overrides):
    trainer = Trainer(
        tiny_model(), quick_train_config(**overrides), checkpoint_path=checkpoint, progress=False
    )
    return trainer.fit(train_images, val_images, on_epoch=on_epoch)


def test_training_lowers_the_validation_loss(train_images, val_images):
    result = fit(train_images, val_images, epochs=4)
    losses = [r.val_loss for r in result.history]
    assert losses[-1] < losses[0] - 20  # nats/image; an untrained model sits near 540
    assert result.best_val_loss == min(losses)
    assert all(r.images_per_s > 0 for r in result.history)


def test_same_params_give_the_same_losses(train_images, val_images):
    first = fit(train_images, val_images)
    second = fit(train_images, val_images)
    for a, b in zip(first.history, second.history, strict=True):
        assert abs(a.train_loss - b.train_loss) < 1e-6
        assert abs(a.val_loss - b.val_loss) < 1e-6


def test_other_seed_gives_other_losses(train_images, val_images):
    first = fit(train_images, val_images, epochs=1)
    other = fit(train_images, val_images, epochs=1, seed=1)
    assert first.history[0].train_loss != other.history[0].train_loss


def test_float_images_out_of_range_are_refused_before_training(train_images, val_images):
    # The seed's Normalize(0.5, 0.5) put pixels in [-1, 1]; the trainer checks once per fit.
    normalised = train_images.float().div(255).sub(0.5).div(0.5)
    model = tiny_model()
    untrained = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = Trainer(model, quick_train_config(), progress=False)
    with pytest.raises(ValueError, match=r"pixel values must lie in \[0, 1\], got \[-1.000"):
        trainer.fit(normalised, val_images)
    assert not trainer.optimizer.state  # not one step taken
    assert all(torch.equal(untrained[name], value) for name, value in model.state_dict().items())
    in_range = fit(train_images.float().div(255), val_images, epochs=1)
    as_uint8 = fit(train_images, val_images, epochs=1)
    assert in_range.history[0].train_loss == pytest.approx(as_uint8.history[0].train_loss)


def test_the_trained_model_comes_back_in_the_cpus_layout(train_images, val_images):
    # On CUDA the trainer keeps large models channels-last (prefers_channels_last); the model
    # it returns is NCHW, the layout CPU scoring and export were tuned and measured with.
    model = tiny_model().to(memory_format=torch.channels_last)
    assert not model.encoder[2].weight.is_contiguous()
    trainer = Trainer(model, quick_train_config(epochs=1), progress=False)
    result = trainer.fit(train_images, val_images)
    assert all(p.is_contiguous() for p in result.model.parameters())
    nchw = fit(train_images, val_images, epochs=1)
    assert result.history[0].val_loss == pytest.approx(nchw.history[0].val_loss, rel=1e-4)


@pytest.mark.parametrize(
    ("device", "side", "expected"),
    [("cuda", 256, True), ("cuda", 64, True), ("cuda", 28, False), ("cpu", 256, False)],
)
def test_channels_last_only_for_large_images_on_cuda(device, side, expected):
    assert prefers_channels_last(torch.device(device), (side, side)) is expected


class Interrupt(Exception):
    pass


def stop_after_one(record):
    if record.epoch == 1:
        raise Interrupt


@pytest.mark.parametrize("first_channels_last", [True, False])
def test_a_resume_in_the_other_weight_layout_continues_the_same_run(
    train_images, val_images, tmp_path, monkeypatch, first_channels_last
):
    # A run checkpointed on CUDA with channels-last weights and resumed on the CPU (or the
    # reverse): Adam's moments must follow the weights' layout, or fused Adam mixes elements.
    uninterrupted = fit(train_images, val_images, epochs=3)
    checkpoint = tmp_path / "ckpt.pt"
    monkeypatch.setattr(
        "convvae.training.trainer.prefers_channels_last", lambda *_: first_channels_last
    )
    with pytest.raises(Interrupt):
        fit(train_images, val_images, checkpoint, stop_after_one, epochs=3)
    monkeypatch.setattr(
        "convvae.training.trainer.prefers_channels_last", lambda *_: not first_channels_last
    )
    resumed = fit(train_images, val_images, checkpoint, epochs=3)
    assert resumed.resumed_from_epoch == 1
    for a, b in zip(uninterrupted.history, resumed.history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)


def test_interrupted_run_resumes_to_the_same_result(train_images, val_images, tmp_path):
    uninterrupted = fit(train_images, val_images, epochs=4, lr_schedule="cosine")
    checkpoint = tmp_path / "ckpt.pt"

    def stop_after_two(record):
        if record.epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(train_images, val_images, checkpoint, stop_after_two, epochs=4, lr_schedule="cosine")
    resumed = fit(train_images, val_images, checkpoint, epochs=4, lr_schedule="cosine")
    assert resumed.resumed_from_epoch == 2
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(uninterrupted.history, resumed.history, strict=True):
        assert abs(a.val_loss - b.val_loss) < 1e-6
    x = train_images[:8].float() / 255
    torch.testing.assert_close(resumed.model.encode(x), uninterrupted.model.encode(x))


def test_checkpoint_of_other_inputs_is_not_resumed(train_images, val_images, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    fit(train_images, val_images, checkpoint, epochs=1)
    logged = []
    trainer = Trainer(
        tiny_model(),
        quick_train_config(epochs=1, lr=0.002),
        checkpoint_path=checkpoint,
        progress=False,
        log=logged.append,
    )
    assert trainer.fit(train_images, val_images).resumed_from_epoch is None
    assert "made for other inputs (train)" in logged[0] and "training afresh" in logged[0]


def fit_logged(train_images, val_images, checkpoint, **overrides):
    logged = []
    trainer = Trainer(
        tiny_model(),
        quick_train_config(**overrides),
        checkpoint_path=checkpoint,
        progress=False,
        log=logged.append,
    )
    return trainer.fit(train_images, val_images), logged


def test_a_checkpoint_past_a_lowered_epoch_budget_is_not_resumed(
    train_images, val_images, tmp_path
):
    # Interrupted after epoch 2 of 3, then re-run with epochs: 1; resuming would hand back
    # the epoch-2 model and a 2-epoch history.
    checkpoint = tmp_path / "ckpt.pt"

    def stop_after_two(record):
        if record.epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(train_images, val_images, checkpoint, stop_after_two, epochs=3)
    result, logged = fit_logged(train_images, val_images, checkpoint, epochs=1)
    assert result.resumed_from_epoch is None
    assert "holds 2 epochs, more than train.epochs (1); training afresh" in logged[0]
    one_epoch = fit(train_images, val_images, epochs=1)
    assert [r.epoch for r in result.history] == [1]
    assert result.history[0].val_loss == pytest.approx(one_epoch.history[0].val_loss, abs=1e-6)


def test_a_checkpoint_from_another_kind_of_device_resumes_with_fresh_noise(
    train_images, val_images, tmp_path
):
    # A CUDA generator's state (16 bytes) cannot be set on a CPU generator, nor the reverse;
    # the model, optimizer and history still resume.
    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Interrupt):
        fit(train_images, val_images, checkpoint, stop_after_one, epochs=2)
    state = torch.load(checkpoint, weights_only=True)
    state["rng"]["noise"] = torch.zeros(16, dtype=torch.uint8)  # the layout CUDA saves
    torch.save(state, checkpoint)
    result, logged = fit_logged(train_images, val_images, checkpoint, epochs=2)
    assert result.resumed_from_epoch == 1
    assert "saved on another kind of device; resuming with fresh posterior noise" in logged[0]
    assert [r.epoch for r in result.history] == [1, 2]
    assert math.isfinite(result.history[1].val_loss)


def test_corrupt_checkpoint_is_a_clear_error(train_images, val_images, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="delete it"):
        fit(train_images, val_images, checkpoint)


def test_early_stopping_keeps_the_best_epoch(train_images, val_images, monkeypatch):
    trainer = Trainer(
        tiny_model(), quick_train_config(epochs=10, early_stopping_patience=2), progress=False
    )
    val_losses = iter([(100.0, 5.0), (90.0, 5.0), (99.0, 5.0), (98.0, 5.0), (10.0, 1.0)])
    monkeypatch.setattr(trainer, "evaluate_loss", lambda images: next(val_losses))
    result = trainer.fit(train_images, val_images)
    assert result.stopped_early
    assert len(result.history) == 4
    assert result.best_epoch == 2 and result.best_val_loss == 95.0


def test_kl_warmup_ramps_beta(train_images, val_images):
    result = fit(train_images, val_images, epochs=3, kl_warmup_epochs=2)
    betas = [r.beta for r in result.history]  # the weight used in each epoch's last step
    # 256 images / 64 = 4 steps per epoch; the last step of epoch e sits at (e - 1 + 3/4) / 2.
    assert betas == pytest.approx([0.375, 0.875, 1.0])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(train_images, val_images, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    trainer = Trainer(
        tiny_model(), quick_train_config(epochs=3), checkpoint_path=checkpoint, progress=False
    )

    def poison_weights(record):
        if record.epoch == 1:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(math.nan)

    with pytest.raises(TrainingDivergedError, match="epoch 2") as err:
        trainer.fit(train_images, val_images, on_epoch=poison_weights)
    assert "checkpoint of epoch 1 is kept" in str(err.value)
    saved = torch.load(checkpoint, weights_only=True)
    assert len(saved["history"]) == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_unavailable_device_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="train.device"):
        select_device("cuda")
    assert select_device("auto").type in ("cpu", "mps")
