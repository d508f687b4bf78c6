"""Train one ConvVAE: the architecture that the model section names for the images, seeded,
trained with early stopping. The pipeline's model and every class model of the benchmark come
from here (``convvae.anomaly.fit`` then fits their reference)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch

from convvae.config import ModelConfig, TrainConfig
from convvae.model.architecture import resolve_architecture
from convvae.model.vae import ConvVAE, count_parameters
from convvae.training.devices import ProcessGroup
from convvae.training.history import TrainResult
from convvae.training.trainer import Trainer


def with_step_budget(cfg: TrainConfig, images: int) -> TrainConfig:
    """``cfg`` with its epochs raised so that ``images`` training images make at least
    ``cfg.min_steps`` optimizer steps (a global batch of ``batch_size`` per step, the last one
    partial). Epochs alone under-train a small set: 14 epochs are 1,190 steps for a
    Fashion-MNIST class and 84 for an mnist-5k one (docs/benchmark/class-selection)."""
    if cfg.min_steps is None:
        return cfg
    steps_per_epoch = math.ceil(images / cfg.batch_size)
    return dataclasses.replace(
        cfg, epochs=max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    )


def train_vae(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_images: torch.Tensor,
    selection_images: torch.Tensor,
    *,
    checkpoint_path: Path | None = None,
    fingerprint: dict | None = None,
    group: ProcessGroup | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """A ConvVAE of ``model_cfg`` for uint8 images (N, C, H, W), trained with ``train_cfg``,
    early stopping on ``selection_images``. Resumes from ``checkpoint_path`` when it holds a
    checkpoint of the same params, architecture and ``fingerprint`` (e.g. the data's digest).
    ``log`` takes the trainer's lines (one per epoch)."""
    group = group or ProcessGroup()
    train_cfg = with_step_budget(train_cfg, len(train_images))
    arch = resolve_architecture(model_cfg, train_images.shape[1:])
    torch.manual_seed(train_cfg.seed)
    model = ConvVAE(arch)
    trainer = Trainer(
        model,
        train_cfg,
        beta=model_cfg.beta,
        checkpoint_path=checkpoint_path,
        fingerprint={"architecture": dataclasses.asdict(arch), **(fingerprint or {})},
        log=log,
        group=group,
    )
    if group.is_main:
        processes = f" x {group.world_size} processes" if group.world_size > 1 else ""
        log(f"training {count_parameters(model):,} parameters on {trainer.device}{processes}")
    return trainer.fit(train_images, selection_images)
