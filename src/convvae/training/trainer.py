"""The trainer: batches sliced from an in-memory uint8 tensor, checkpoints, resume, early stop.

Reproducible on CPU: the shuffle order and the reparameterisation noise come from generators
whose states are saved in every checkpoint, so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from convvae.config import TrainConfig
from convvae.data.images import check_pixels, images_per_batch, to_unit_interval
from convvae.errors import TrainingDivergedError
from convvae.model.vae import ConvVAE, elbo_terms
from convvae.runtime.progress import live_bar
from convvae.training.checkpoint import resume_training_state, save_training_state
from convvae.training.devices import ProcessGroup, prefers_channels_last, select_device
from convvae.training.history import EpochRecord, TrainResult


class Trainer:
    """Trains one ConvVAE on uint8 image tensors of shape (N, C, H, W)."""

    def __init__(
        self,
        model: ConvVAE,
        cfg: TrainConfig,
        beta: float = 1.0,
        checkpoint_path: str | Path | None = None,
        progress: bool = True,
        fingerprint: dict | None = None,
        log: Callable[[str], None] = print,
        group: ProcessGroup | None = None,
    ) -> None:
        """``fingerprint`` identifies the run (e.g. data hash, architecture): a checkpoint made
        under another fingerprint or other train params is not resumed but started afresh.
        With a ``group`` of several processes, each trains on its shard of every global batch
        (train.batch_size images in all) under DistributedDataParallel; rank 0 alone writes."""
        self.cfg = cfg
        self.fingerprint = fingerprint or {}
        self.log = log
        self.beta = beta
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.progress = progress
        self.group = group or ProcessGroup()
        self.device = select_device(cfg.device)
        if self.device.type == "cuda" and self.group.world_size > 1:
            self.device = torch.device("cuda", self.group.local_rank)
        self.model = model.to(self.device)
        if prefers_channels_last(self.device, model.arch.image_size):
            self.model.to(memory_format=torch.channels_last)
        # Gradients are averaged across processes; the forward pass goes through the wrapper.
        self.parallel_model = (
            torch.nn.parallel.DistributedDataParallel(model)
            if self.group.world_size > 1
            else self.model
        )
        # bf16 autocast where the hardware has fast bf16 (GPUs); fp32 elsewhere.
        self.autocast = self.device.type in ("cuda", "mps")
        optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_cls(
            self.model.parameters(),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
            if cfg.lr_schedule == "cosine"
            else None
        )
        self.shuffle_generator = torch.Generator().manual_seed(cfg.seed)
        self.noise_generator = torch.Generator(self.device).manual_seed(cfg.seed + 1)
        self.history: list[EpochRecord] = []
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.epochs_without_improvement = 0

    def fit(
        self,
        train_images: torch.Tensor,
        val_images: torch.Tensor,
        on_epoch: Callable[[EpochRecord], None] | None = None,
    ) -> TrainResult:
        """Train until ``cfg.epochs`` or early stopping; resume from the checkpoint if present.

        ``on_epoch`` is called after every epoch (for tracking); the result holds the best model.
        """
        torch.manual_seed(self.cfg.seed)
        resumed_from = resume_training_state(self)
        train_images = train_images.to(self.device)
        val_images = val_images.to(self.device)
        if train_images.dtype != torch.uint8:  # uint8 is in range by construction
            check_pixels(train_images)  # once here, not at every step (elbo_terms)
        patience = self.cfg.early_stopping_patience
        stopped_early = patience is not None and self.epochs_without_improvement >= patience
        for epoch in range(len(self.history) + 1, self.cfg.epochs + 1):
            if stopped_early:
                break
            record = self._run_epoch(epoch, train_images, val_images)
            self.history.append(record)
            if record.val_loss < self.best_val_loss:
                self.best_val_loss, self.best_epoch = record.val_loss, epoch
                self.best_state = copy.deepcopy(self.model.state_dict())
                self.epochs_without_improvement = 0
            else:
                self.epochs_without_improvement += 1
            save_training_state(self)
            if on_epoch is not None:
                on_epoch(record)
            stopped_early = patience is not None and self.epochs_without_improvement >= patience
        # NCHW, whatever training used: CPU scoring and export were tuned and measured so.
        best = copy.deepcopy(self.model).to("cpu", memory_format=torch.contiguous_format)
        best.load_state_dict(self.best_state)
        return TrainResult(
            best, self.history, self.best_epoch, self.best_val_loss, stopped_early, resumed_from
        )

    def _kl_weight(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """beta, ramped linearly over the first ``kl_warmup_epochs`` epochs (per step)."""
        if self.cfg.kl_warmup_epochs == 0:
            return self.beta
        progress = (epoch - 1 + step / steps_per_epoch) / self.cfg.kl_warmup_epochs
        return self.beta * min(1.0, progress)

    def _run_epoch(
        self, epoch: int, train_images: torch.Tensor, val_images: torch.Tensor
    ) -> EpochRecord:
        started = time.perf_counter()
        sums, beta = self._train_pass(epoch, train_images)
        n = len(train_images)
        seconds = time.perf_counter() - started
        train_loss, train_recon, train_kl = (sums / n).tolist()
        val_recon, val_kl = self.evaluate_loss(val_images)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            train_recon=train_recon,
            train_kl=train_kl,
            val_loss=val_recon + self.beta * val_kl,
            val_recon=val_recon,
            val_kl=val_kl,
            beta=beta,
            lr=lr,
            images_per_s=n / seconds,
            seconds=seconds,
        )
        if not math.isfinite(record.val_loss):
            self._diverged(f"validation loss is {record.val_loss} after epoch {epoch}")
        if self.progress and self.group.is_main:
            self.log(
                f"epoch {epoch}/{self.cfg.epochs}: train {train_loss:.2f}, "
                f"val {record.val_loss:.2f} nats/image, {record.images_per_s:.0f} img/s"
            )
        return record

    def _train_pass(self, epoch: int, train_images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One pass over the shuffled training images; returns the summed (loss, recon, kl)
        over all images of all processes, and the KL weight of the last step."""
        self.parallel_model.train()
        n, batch_size = len(train_images), self.cfg.batch_size
        rank, world = self.group.rank, self.group.world_size
        steps = math.ceil(n / batch_size)
        # One gather per epoch; every batch is then a contiguous slice of uint8 memory.
        order = torch.randperm(n, generator=self.shuffle_generator).to(self.device)
        shuffled = train_images[order]
        sums = torch.zeros(3, device=self.device)  # loss, recon, kl, summed over images
        started = time.perf_counter()
        # On a terminal only; logs get the one line per epoch below.
        bar = live_bar(n, f"epoch {epoch}/{self.cfg.epochs}", self.progress and self.group.is_main)
        beta = self.beta
        for step in range(steps):
            batch = shuffled[step * batch_size : (step + 1) * batch_size]
            # Every process draws the whole batch's noise and keeps its shard's rows: N processes
            # then follow the trajectory of one process with the same global batch.
            eps = torch.randn(
                (len(batch), self.model.arch.latent_dim),
                device=self.device,
                generator=self.noise_generator,
            )
            low, high = len(batch) * rank // world, len(batch) * (rank + 1) // world
            x = to_unit_interval(batch[low:high])
            beta = self._kl_weight(epoch, step, steps)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                logits, mu, logvar = self.parallel_model(x, eps=eps[low:high])
            recon, kl = elbo_terms(
                logits, x, mu, logvar, self.model.arch.likelihood, pixels_checked=True
            )
            per_image = recon + beta * kl
            # The mean over the global batch; DDP averages gradients over processes, hence world.
            loss = per_image.sum() * (world / len(batch))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
            self.optimizer.step()
            sums += torch.stack([per_image.detach().sum(), recon.detach().sum(), kl.detach().sum()])
            seen = min((step + 1) * batch_size, n)
            bar.update(len(batch))
            # Synchronise rarely on GPUs; on CPU this check is free.
            if self.device.type == "cpu" or step % 50 == 0 or step == steps - 1:
                self._check_finite(sums[0], epoch, step)
                bar.set_postfix(
                    loss=f"{sums[0].item() * world / seen:.2f}",
                    img_s=f"{seen / (time.perf_counter() - started):.0f}",
                    refresh=False,
                )
        if world > 1:
            torch.distributed.all_reduce(sums)
        bar.close()
        return sums, beta

    @torch.no_grad()
    def evaluate_loss(self, images: torch.Tensor) -> tuple[float, float]:
        """Mean reconstruction NLL and KL (nats/image) with fixed noise, so epochs compare."""
        self.model.eval()
        # Bounded by pixels: 512 validation images at 256 px RGB in one batch added 4.9 GB to
        # training's peak (speed/forward_memory.py).
        batch_size = images_per_batch(self.model.arch.image_shape)
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed + 2)
        sums = torch.zeros(2, device=self.device)
        for start in range(0, len(images), batch_size):
            x = to_unit_interval(images[start : start + batch_size])
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                logits, mu, logvar = self.model(x, generator)
            recon, kl = elbo_terms(logits, x, mu, logvar, self.model.arch.likelihood)
            sums += torch.stack([recon.sum(), kl.sum()])
        return tuple((sums / len(images)).tolist())

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        if not torch.isfinite(loss_sum):
            self._diverged(f"training loss became {loss_sum.item()} at epoch {epoch}, step {step}")

    def _diverged(self, what: str) -> None:
        kept = (
            f"the checkpoint of epoch {len(self.history)} is kept at {self.checkpoint_path}"
            if self.checkpoint_path is not None and self.history
            else "no epoch had finished, so no checkpoint was written"
        )
        raise TrainingDivergedError(
            f"{what}; {kept}; lower train.lr or set train.grad_clip_norm, then re-run"
        )
